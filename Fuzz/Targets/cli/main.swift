// The command line: any words (NUL-separated in the input) through what main.swift does with
// them (the split at "--", the bare --debug-exit) and the ArgumentParser commands' parse and
// validate, then everything a run would derive from the options before it starts a machine
// (memory size, virtio devices, trace switches, timeout, entry). Nothing is run. Checked:
// a command that validated yields a usable configuration (its timeout, port and entry parse
// again), and every error has a message.

import FuzzSupport
import KernelLoading
import Memory
import RunControl
@testable import swiftvmm

@main enum Target { static func main() { runLibFuzzer(fuzz) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let bytes = input.rest()
    var arguments = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    if arguments.count > 64 { return 0 }
    // main.swift's preprocessing.
    var passthrough: [String] = []
    if let i = arguments.firstIndex(of: "--") {
        passthrough = Array(arguments[(i + 1)...])
        arguments = Array(arguments[..<i])
    }
    arguments = arguments.map { $0 == "--debug-exit" ? "--debug-exit=0xf4" : $0 }

    // As main.swift: a run is parsed as SwiftVMM directly; anything else, and any error, goes
    // through Root (whose error message is what the user sees).
    let direct = ["inspect", "run", "help"].contains(arguments.first ?? "") || arguments.contains("--version")
        ? nil : try? SwiftVMM.parseAsRoot(arguments)
    do {
        let command = try direct ?? Root.parseAsRoot(arguments)
        if var vmm = command as? SwiftVMM {
            vmm.passthrough = passthrough
            check(vmm)
        }
    } catch {
        _ = Root.message(for: error)
        _ = Root.exitCode(for: error)
    }
    return 0
}

/// What `run` derives from a validated command, short of building the machine.
func check(_ vmm: SwiftVMM) {
    _ = try? MemorySize(parsing: vmm.memory)
    let virtio = try? vmm.virtioConfig()
    fuzzCheck(virtio != nil, "validated, but virtioConfig throws")
    fuzzCheck(vmm.block.count <= 26, "\(vmm.block.count) disks validated")
    _ = vmm.traceOptions
    if let t = vmm.timeout {
        let seconds = DurationText.parse(t)
        fuzzCheck(seconds != nil && seconds! > 0 && seconds! <= DurationText.maxSeconds, "--timeout=\(t) validated as \(String(describing: seconds))")
    }
    if let p = vmm.debugExit { fuzzCheck(SwiftVMM.parsePort(p) != nil, "--debug-exit=\(p) validated") }
    fuzzCheck(EntryChoice(rawValue: vmm.entry) != nil, "--entry=\(vmm.entry) validated")
    fuzzCheck(vmm.cpus >= 1, "--cpus=\(vmm.cpus) validated")
    _ = BootOptions(commandLine: (vmm.guestWords + vmm.passthrough).joined(separator: " ")).effectiveCommandLine(isLinux: true)
}
