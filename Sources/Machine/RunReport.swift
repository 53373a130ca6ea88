import CrashReports
import Devices
import HostSupport
import RunControl

/// The `--report=FILE` JSON: what happened, why, when, and what crossed the boundary.
/// The fields are documented in docs/ci.md; tests check them against that list.
public enum RunReport {
    public static let formatVersion = 1

    public static func json(config: MachineConfig, kernelFormat: String, commandLine: String,
                            result: GuestMachine.RunResult, timeline: Timeline) -> JSON {
        let o = result.outcome
        let ev = timeline.snapshot
        var guestStatus: JSON = .null
        switch o {
        case .guestExit(let s): guestStatus = .int(Int64(s))
        case .debugExit(let v): guestStatus = .int(Int64(v))
        default: break
        }
        var matched: JSON = .null
        switch o {
        case .expectationsMet(let p, let line), .failOn(let p, let line):
            matched = .object([("pattern", .string(p)), ("line", .string(line))])
        case .kernelPanic(let line):
            matched = .object([("pattern", .string(ConsoleMonitor.panicMarker)), ("line", .string(line))])
        default: break
        }
        let stats = result.statistics
        return .object([
            ("swiftvmm", .string(SwiftVMMVersion.string)),
            ("report_version", .int(Int64(formatVersion))),
            ("outcome", .string(o.name)),
            ("exit_code", .int(Int64(o.exitCode))),
            ("reason", .string(o.summary)),
            ("guest_status", guestStatus),
            ("matched", matched),
            ("expect", .object([
                ("patterns", .array(config.expect.map { .string($0) })),
                ("matched", .int(Int64(result.expectationsMatched))),
            ])),
            ("timings_ms", .object([
                ("first_guest_entry", .optional(timeline.milliseconds(ev.firstGuestEntry))),
                ("first_console_byte", .optional(timeline.milliseconds(ev.firstConsoleByte))),
                ("boot_complete", .optional(timeline.milliseconds(ev.bootComplete))),
                ("expect", .array(ev.expectMatches.map {
                    .object([("pattern", .string($0.pattern)), ("ms", .optional(timeline.milliseconds($0.at)))])
                })),
                ("end", .optional(timeline.milliseconds(ev.end))),
            ])),
            ("config", .object([
                ("memory_bytes", .int(Int64(config.memory.bytes))),
                ("cpus", .int(Int64(config.cpus))),
                ("kernel", .string(config.kernelPath)),
                ("kernel_format", .string(kernelFormat)),
                ("command_line", .string(commandLine)),
                ("timeout_s", config.timeout.map { .double($0) } ?? .null),
                ("debug_exit_port", config.debugExitPort.map { .int(Int64($0)) } ?? .null),
                ("panic_detection", .bool(config.detectPanic)),
            ])),
            ("counts", .object([
                ("exits", .object(stats.exitsByReason.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
                ("hypercalls", .object(stats.hypercallsByNumber.sorted { $0.key < $1.key }.map { (String($0.key), .int(Int64($0.value))) })),
                ("devices", .object(stats.deviceAccesses.sorted { $0.key < $1.key }.map {
                    ($0.key, .object([("reads", .int(Int64($0.value.reads))), ("writes", .int(Int64($0.value.writes)))]))
                })),
                ("unclaimed_port_accesses", .int(Int64(stats.unclaimedPortAccesses))),
                ("unclaimed_mmio_accesses", .int(Int64(stats.unclaimedMMIOAccesses))),
                ("guest_errors", .int(Int64(stats.guestErrors))),
            ])),
            ("crash", result.crash.map { c in
                var fields: [(String, JSON)] = []
                if case .guestFault(let summary, let report) = o {
                    fields.append(("summary", .string(summary)))
                    fields.append(("fault", .string(report)))
                }
                fields.append(("vcpus", c.json))
                return .object(fields)
            } ?? .null),
            ("oops", result.oops.map { .object([("frames", $0.json), ("frames_dropped", .int(Int64($0.framesDropped)))]) } ?? .null),
        ])
    }
}
