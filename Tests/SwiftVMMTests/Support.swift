import Foundation
import Testing

/// Paths and process helpers shared by the tests.
enum Repo {
    /// The package root, found from this file's location.
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The bundled guest, built by `make -C guests/minimal`.
    static var minimalGuest: String { root.appendingPathComponent("guests/minimal/build/minimal.elf").path }

    /// The swiftvmm binary built alongside the tests (same configuration, same build folder).
    static var swiftvmm: String {
        let besideTests = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for dir in [besideTests, besideTests.deletingLastPathComponent()] {
            let candidate = dir.appendingPathComponent("swiftvmm").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return root.appendingPathComponent(".build/debug/swiftvmm").path
    }
}

/// Tests that boot guests need /dev/kvm and the built guest. Without them they fail, loudly,
/// with what is missing, instead of passing without having run.
func requireKVMAndGuest() throws {
    let fd = open("/dev/kvm", O_RDWR)
    if fd < 0 {
        Issue.record("/dev/kvm cannot be opened (\(String(cString: strerror(errno)))): these tests need KVM")
    }
    try #require(fd >= 0)
    close(fd)
    let haveGuest = FileManager.default.fileExists(atPath: Repo.minimalGuest)
    if !haveGuest { Issue.record("\(Repo.minimalGuest) is missing: run `make -C guests/minimal` first") }
    try #require(haveGuest)
    let haveBinary = FileManager.default.isExecutableFile(atPath: Repo.swiftvmm)
    if !haveBinary { Issue.record("swiftvmm binary not found at \(Repo.swiftvmm)") }
    try #require(haveBinary)
}

struct RunResult {
    let status: Int32
    let stdout: String
    let stderr: String
    var lines: [String] { stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) }
}

/// Run swiftvmm with `arguments`, feeding `input` to stdin, and wait at most `timeout` seconds
/// (a hang is a failure, not a stuck test run). `launcher` runs it through another command
/// (e.g. `ip netns exec NS`).
func runVMM(_ arguments: [String], input: String? = nil, timeout: TimeInterval = 60, launcher: [String] = []) throws -> RunResult {
    let command = launcher + [Repo.swiftvmm] + arguments
    return try runProcess(command[0], Array(command.dropFirst()), input: input, timeout: timeout)
}

/// Run any program the same way: both output pipes drained concurrently (a chatty child cannot
/// block on a full pipe), killed and recorded as a failure if it outlives `timeout`.
func runProcess(_ executable: String, _ arguments: [String], input: String? = nil,
                environment: [String: String]? = nil, timeout: TimeInterval = 60) throws -> RunResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let out = Pipe(), err = Pipe(), inp = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input == nil ? FileHandle.nullDevice : inp
    final class Box: @unchecked Sendable { var data = Data() }
    let outBox = Box(), errBox = Box()
    let group = DispatchGroup()
    for (pipe, box) in [(out, outBox), (err, errBox)] {
        group.enter()
        DispatchQueue.global().async {
            box.data = pipe.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
    }
    try process.run()
    if let input {
        inp.fileHandleForWriting.write(input.data(using: .utf8)!)
        try? inp.fileHandleForWriting.close()
    }
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(5_000) }
    if process.isRunning {
        process.terminate()
        usleep(200_000)
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        group.wait()
        Issue.record("""
            \(executable) \(arguments.joined(separator: " ")) did not finish within \(timeout) s
            stdout: \(String(decoding: outBox.data.suffix(2000), as: UTF8.self))
            stderr: \(String(decoding: errBox.data.suffix(2000), as: UTF8.self))
            """)
        throw CancellationError()
    }
    process.waitUntilExit()
    group.wait()
    return RunResult(status: process.terminationStatus,
                     stdout: String(decoding: outBox.data, as: UTF8.self),
                     stderr: String(decoding: errBox.data, as: UTF8.self))
}

/// Boot the bundled guest with `words` on its command line.
func bootMinimal(_ words: [String], memory: String = "32m", options: [String] = [], input: String? = nil) throws -> RunResult {
    try requireKVMAndGuest()
    return try runVMM(options + [memory, Repo.minimalGuest] + words, input: input)
}
