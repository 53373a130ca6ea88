import CKVM
import Foundation
import Testing

/// The Debian kernels `scripts/fetch-debian-kernel` caches (scripts/test runs it first).
enum DebianKernel {
    static var folder: URL {
        if let env = ProcessInfo.processInfo.environment["SWIFTVMM_DEBIAN_KERNELS"], !env.isEmpty {
            return URL(fileURLWithPath: env)
        }
        let cache = ProcessInfo.processInfo.environment["SWIFTVMM_CACHE"]
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/swiftvmm").path
        return URL(fileURLWithPath: cache).appendingPathComponent("debian-kernel")
    }

    /// `flavour`: "cloud" or "generic"; `file`: "vmlinux" or "vmlinuz". Fails the test,
    /// loudly, when the image is missing rather than skipping it.
    static func path(_ flavour: String = "cloud", _ file: String) throws -> String {
        let p = folder.appendingPathComponent(flavour).appendingPathComponent(file).path
        let exists = FileManager.default.fileExists(atPath: p)
        if !exists { Issue.record("\(p) is missing: run scripts/fetch-debian-kernel (scripts/test does)") }
        try #require(exists)
        return p
    }

    static func bytes(_ flavour: String = "cloud", _ file: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: try path(flavour, file))))
    }
}

/// The slow Linux boots run only with SWIFTVMM_LONG_TESTS=1.
let longTestsEnabled = ProcessInfo.processInfo.environment["SWIFTVMM_LONG_TESTS"] == "1"

/// What the console showed until every pattern was seen (or the time ran out), and when
/// each one first appeared (seconds since start), for the report.
struct ConsoleWatch {
    var output: String
    var stderr: String
    var seenAt: [String: Double]
    var status: Int32
    var allSeen: Bool
}

/// Run swiftvmm, read its stdout as it comes (serial line ends, CRLF, read as \\n), and stop it with SIGTERM once every one of
/// `patterns` has appeared in the output (or after `timeout` seconds). A kernel booting under
/// emulation is slow: the test takes what it needs and does not wait for the rest.
/// `launcher` runs swiftvmm through another command (e.g. `ip netns exec NS`).
func watchVMM(_ arguments: [String], until patterns: [String], timeout: TimeInterval,
              launcher: [String] = []) throws -> ConsoleWatch {
    let process = Process()
    let command = launcher + [Repo.swiftvmm] + arguments
    process.executableURL = URL(fileURLWithPath: command[0])
    process.arguments = Array(command.dropFirst())
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    final class Box: @unchecked Sendable {
        let lock = NSLock()
        var data = Data()
        var err = Data()
    }
    let box = Box()
    out.fileHandleForReading.readabilityHandler = { h in
        let d = h.availableData
        box.lock.lock(); box.data.append(d); box.lock.unlock()
    }
    err.fileHandleForReading.readabilityHandler = { h in
        let d = h.availableData
        box.lock.lock(); box.err.append(d); box.lock.unlock()
    }
    let start = Date()
    try process.run()
    var seenAt: [String: Double] = [:]
    while process.isRunning && Date().timeIntervalSince(start) < timeout {
        usleep(100_000)
        box.lock.lock(); let text = String(decoding: box.data, as: UTF8.self).replacingOccurrences(of: "\r\n", with: "\n"); box.lock.unlock()
        // Seen once the whole line holding it has arrived (the test checks that line later).
        for p in patterns where seenAt[p] == nil {
            if let r = text.range(of: p), text[r.upperBound...].contains("\n") || p.hasSuffix("\n") {
                seenAt[p] = Date().timeIntervalSince(start)
            }
        }
        if seenAt.count == patterns.count { break }
    }
    var stopNote = ""
    if process.isRunning {
        let termAt = Date()
        defer { stopNote = "SIGTERM at \(Int(termAt.timeIntervalSince(start))) s, gone \(String(format: "%.1f", Date().timeIntervalSince(termAt))) s later" }
        process.terminate()                       // SIGTERM: swiftvmm ends the run cleanly
        let deadline = Date().addingTimeInterval(30)   // a long emulated instruction (rep stos over MiBs) can delay the kick on PVM hosts
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            // Still there: say where its threads are before killing it.
            let pid = process.processIdentifier
            var where_ = ""
            if let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") {
                for t in tasks {
                    let comm = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/comm", encoding: .utf8)) ?? "?"
                    let wchan = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/wchan", encoding: .utf8)) ?? "?"
                    let status = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/status", encoding: .utf8)) ?? ""
                    let sig = status.split(separator: "\n").filter { $0.hasPrefix("Sig") || $0.hasPrefix("State") || $0.hasPrefix("ShdPnd") }
                    where_ += "\(comm.trimmingCharacters(in: .whitespacesAndNewlines)) wchan=\(wchan) \(sig.joined(separator: " "))\n"
                }
            }
            Issue.record("swiftvmm did not end within 30 s of SIGTERM; its threads:\n\(where_)")
            kill(pid, SIGKILL)
        }
    }
    if !stopNote.isEmpty { print("swiftvmm \(arguments.prefix(8).joined(separator: " ")) ...: \(stopNote)") }
    process.waitUntilExit()
    out.fileHandleForReading.readabilityHandler = nil
    err.fileHandleForReading.readabilityHandler = nil
    box.lock.lock(); let text = String(decoding: box.data, as: UTF8.self).replacingOccurrences(of: "\r\n", with: "\n"); let errText = String(decoding: box.err, as: UTF8.self); box.lock.unlock()
    for p in patterns where seenAt[p] == nil && text.contains(p) { seenAt[p] = Date().timeIntervalSince(start) }
    let all = seenAt.count == patterns.count
    if !all {
        Issue.record("""
            swiftvmm \(arguments.joined(separator: " ")) did not show \(patterns.filter { seenAt[$0] == nil }) within \(Int(timeout)) s
            stdout (end): \(text.suffix(3000))
            stderr (end): \(errText.suffix(2000))
            """)
    }
    return ConsoleWatch(output: text, stderr: errText, seenAt: seenAt, status: process.terminationStatus, allSeen: all)
}

/// A small 32-bit ELF kernel, lguest-era style: linked at 0xC0100000 with physical = virtual
/// addresses (unusable), so swiftvmm must intuit the page offset to load it. It prints a line
/// on COM1 and exits through the hypercall page's port (status 42), or resets the machine
/// through the i8042 (`reset`), or carries no `movl <addr>,%eax` for the vote (`noEvidence`).
func build32BitKernel(reset: Bool = false, noEvidence: Bool = false) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-k32-\(getpid())-\(reset)-\(noEvidence)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let source = """
        .code32
        .text
        .globl _start
        _start:
            mov $0x3f8, %dx
            mov $(msg - 0xC0000000), %esi   /* paging is off: physical = virtual - PAGE_OFFSET */
        1:  lodsb
            test %al, %al
            jz 2f
            out %al, %dx
            jmp 1b
        2:
        .ifdef RESET
            mov $0xfe, %al
            out %al, $0x64
        .else
            mov $2, %eax                    /* swiftvmm's exit hypercall: port 0xE0, status in %edi */
            mov $42, %edi
            out %eax, $0xe0
        .endif
        3:  hlt
            jmp 3b
        .ifndef NOEVIDENCE
            /* Never run: kernel code reading globals through %eax, what the vote counts. */
            movl counter, %eax
            movl counter + 4, %eax
            movl counter + 8, %eax
            movl counter + 12, %eax
            movl counter + 16, %eax
        .endif
        .data
        counter: .long 0, 0, 0, 0, 0
        msg: .asciz "hello from a 32-bit kernel\\n"
        """
    let src = dir.appendingPathComponent("k.S"), obj = dir.appendingPathComponent("k.o"), elf = dir.appendingPathComponent("k.elf")
    try source.write(to: src, atomically: true, encoding: .utf8)
    var asArgs = ["--32", "-o", obj.path, src.path]
    if reset { asArgs = ["--defsym", "RESET=1"] + asArgs }
    if noEvidence { asArgs = ["--defsym", "NOEVIDENCE=1"] + asArgs }
    try runTool("/usr/bin/as", asArgs)
    try runTool("/usr/bin/ld", ["-m", "elf_i386", "-N", "-Ttext=0xC0100000", "-e", "_start", "--build-id=none",
                                "--no-warn-rwx-segments", "-o", elf.path, obj.path])
    return elf.path
}

func runTool(_ tool: String, _ args: [String]) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = args
    try p.run()
    p.waitUntilExit()
    if p.terminationStatus != 0 { Issue.record("\(tool) \(args) failed") }
    try #require(p.terminationStatus == 0)
}

/// A file of `size` bytes for use as an initrd (its contents do not matter to these tests:
/// the kernel reports where it is long before it unpacks it).
func makeInitrd(size: Int) throws -> String {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-initrd-\(getpid())-\(size)")
    if !FileManager.default.fileExists(atPath: url.path) {
        var bytes = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size, by: 4096) { bytes[i] = UInt8(truncatingIfNeeded: i >> 12) }
        try Data(bytes).write(to: url)
    }
    return url.path
}

func kvm_cpuid_entry2_for_tests(function: UInt32, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) -> kvm_cpuid_entry2 {
    var e = kvm_cpuid_entry2()
    e.function = function
    e.eax = eax; e.ebx = ebx; e.ecx = ecx; e.edx = edx
    return e
}

/// A sparse file of `size` bytes (for inputs too large to be worth writing).
func makeSparseFile(size: UInt64) throws -> String {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftvmm-sparse-\(getpid())-\(size)")
    FileManager.default.createFile(atPath: url.path, contents: nil)
    let h = try FileHandle(forWritingTo: url)
    try h.truncate(atOffset: size)
    try h.close()
    return url.path
}
