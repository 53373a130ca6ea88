import Foundation
import KernelLoading
import Testing

/// Boots through each entry path with real guests: the bundled minimal guest (PVH and 64-bit),
/// a 32-bit ELF built here, and Debian's own kernels up to their early console output.
@Suite("Entry paths with the bundled guest and a 32-bit kernel")
struct EntryPathTests {
    @Test("the minimal guest boots through PVH by default, and through each entry it supports",
          arguments: [[], ["--entry=auto"], ["--entry=pvh"], ["--entry=linux64"]])
    func minimalEntries(options: [String]) throws {
        let r = try bootMinimal(["hello", "test=hypercalls", "exit=9"], options: options + ["--verbose"])
        #expect(r.status == 9, "\(r.stderr)")
        #expect(r.stdout.contains("Hello from the minimal guest"))
        #expect(!r.stdout.contains("FAIL"), "\(r.stdout)")
        let expected = options.last == "--entry=linux64" ? "entry linux64" : "entry pvh"
        #expect(r.stderr.contains(expected), "\(r.stderr)")
        // The minimal guest is not Linux: nothing is added to its command line.
        #expect(r.stderr.contains("command line \"hello test=hypercalls exit=9\""), "\(r.stderr)")
    }

    @Test("a 32-bit ELF kernel with unusable physical addresses loads at its intuited page offset")
    func thirtyTwoBit() throws {
        try requireKVMAndGuest()
        let k = try build32BitKernel()
        let r = try runVMM(["--verbose", "16m", k])
        #expect(r.status == 42, "\(r.stderr)")
        #expect(r.stdout == "hello from a 32-bit kernel\n")
        #expect(r.stderr.contains("(ELF32, entry linux32)"))
    }

    @Test("an i8042 reset (0xFE to port 0x64) ends the run as a reboot, exit 0")
    func i8042Reset() throws {
        try requireKVMAndGuest()
        let r = try runVMM(["--verbose", "16m", try build32BitKernel(reset: true)])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "hello from a 32-bit kernel\n")
        #expect(r.stderr.contains("guest requested a reboot"))
    }
}

/// Debian's kernels on the real /dev/kvm. On hosts where guest kernel code is emulated
/// (PVM), these take tens of seconds (vmlinux) to minutes (the bzImage decompresses itself
/// first); docs/boot.md has the measured times.
@Suite("Debian kernels boot to their early console output", .serialized)
struct DebianBootTests {
    /// What these hosts need to get a stock kernel far; harmless elsewhere.
    static let kernelWords = ["earlyprintk=serial,ttyS0", "noxsave", "nosmap", "nopku", "mitigations=off", "nokaslr"]

    /// `swiftvmm --verbose` names the e820 map it built (stderr, before the guest runs); the
    /// kernel must print exactly that map.
    static func e820Lines(from stderr: String) -> [String] {
        stderr.split(separator: "\n").compactMap { l in
            l.range(of: "swiftvmm: e820: ").map { "BIOS-e820: " + l[$0.upperBound...] + "\n" }
        }
    }

    /// And the initrd's range, which Linux prints rounded out to whole pages.
    static func ramdiskLine(from stderr: String) -> String? {
        // "swiftvmm: initrd <path> at 0x7fb6000-0x7fff3df (300000 bytes)"
        guard let line = stderr.split(separator: "\n").first(where: { $0.contains("swiftvmm: initrd ") }),
              let at = line.range(of: " at 0x") else { return nil }
        let parts = line[at.upperBound...].split(separator: " ")[0].split(separator: "-")
        guard parts.count == 2, let start = UInt64(parts[0], radix: 16),
              let last = UInt64(parts[1].dropFirst(2), radix: 16) else { return nil }
        let end = (last + 1 + 0xFFF) & ~UInt64(0xFFF)
        func h(_ v: UInt64) -> String { let s = String(v, radix: 16); return "0x" + String(repeating: "0", count: max(0, 8 - s.count)) + s }
        return "RAMDISK: [mem \(h(start))-\(h(end - 1))]"
    }

    /// Boot with an initrd and watch the console until the RAMDISK line (and `extra`) has
    /// appeared; then check everything before it against what swiftvmm said it set up.
    func boot(_ kernel: String, memory: String = "128m", options: [String] = [], words: [String] = [],
              extra: [String] = [], timeout: TimeInterval) throws -> ConsoleWatch {
        try requireKVMAndGuest()
        let initrd = try makeInitrd(size: 300_000)
        let args = ["--verbose", "--pvm-host", "--initrd", initrd] + options + [memory, kernel] + Self.kernelWords + words
        let commandLine = (Self.kernelWords + words + ["console=ttyS0"]).joined(separator: " ")
        let w = try watchVMM(args, until: ["Linux version 6.", "Command line: \(commandLine)\n", "RAMDISK: [mem "] + extra,
                             timeout: timeout)
        let map = Self.e820Lines(from: w.stderr)
        #expect(map.count >= 4, "swiftvmm --verbose printed no e820 map: \(w.stderr)")
        for line in map { #expect(w.output.contains(line), "the kernel did not print \(line)") }
        // No other e820 lines than ours.
        #expect(w.output.components(separatedBy: "BIOS-e820: ").count - 1 == map.count)
        let ramdisk = Self.ramdiskLine(from: w.stderr)
        #expect(ramdisk != nil, "swiftvmm --verbose named no initrd: \(w.stderr)")
        if let ramdisk { #expect(w.output.contains(ramdisk), "expected \(ramdisk)") }
        #expect(w.status == 143, "swiftvmm should end on the test's SIGTERM: \(w.stderr.suffix(1500))")
        return w
    }

    static func report(_ name: String, _ w: ConsoleWatch) {
        let times = w.seenAt.sorted { $0.value < $1.value }.map { "  \(String(format: "%6.1f s", $0.value))  \($0.key.trimmingCharacters(in: .newlines))" }
        print("milestones for \(name):\n" + times.joined(separator: "\n"))
    }

    @Test("Debian vmlinux (ELF, PVH entry): banner, exact command line, our e820 map, our RAMDISK line")
    func vmlinuxPVH() throws {
        let w = try boot(try DebianKernel.path("cloud", "vmlinux"), timeout: 300)
        Self.report("vmlinux via PVH", w)
        #expect(w.allSeen)
        #expect(w.output.contains("RAMDISK: [mem 0x07fb6000-0x07ffffff]"))
    }

    @Test("Debian vmlinux through the 64-bit entry with boot_params")
    func vmlinux64() throws {
        let w = try boot(try DebianKernel.path("cloud", "vmlinux"), options: ["--entry=linux64"], timeout: 300)
        Self.report("vmlinux via linux64", w)
        #expect(w.allSeen)
    }

    @Test("--cpus 2, acpi=off: Linux reads the MP table and finds both processors and the IOAPIC")
    func smp() throws {
        // With ACPI (the default) Linux prefers the MADT; acpi=off leaves it the MP table, which
        // kernels built without ACPI (the project's test kernel) depend on.
        let w = try boot(try DebianKernel.path("generic", "vmlinux"), options: ["--cpus", "2"], words: ["acpi=off"], extra: [
            "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]",
            "Intel MultiProcessor Specification v1.4",
            "MPTABLE: OEM ID: SWIFTVMM",
            "Processor #0 (Bootup-CPU)",
            "Processor #1\n",
            "IOAPIC[0]: apic_id 2, version 17, address 0xfec00000, GSI 0-23",
            "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
        ], timeout: 300)
        Self.report("generic vmlinux, --cpus 2, acpi=off", w)
        #expect(w.allSeen)
    }

    /// Debian's cloud kernel has no MP-table parser: before swiftvmm had ACPI tables it said
    /// "APIC: ACPI MADT or MP tables are not detected" and ran on one CPU with every interrupt
    /// through the 8259 ("virtual wire mode", "SMP disabled").
    @Test("--cpus 2: the cloud kernel finds swiftvmm's ACPI tables, both CPUs and the IOAPIC, and goes to symmetric I/O mode")
    func acpi() throws {
        let w = try boot(try DebianKernel.path("cloud", "vmlinux"), options: ["--cpus", "2", "--rng"], extra: [
            "ACPI: RSDP 0x00000000000E0000 000024 (v02 SWVMM )",
            "ACPI: XSDT 0x00000000000E0030 000034 (v01 SWVMM  SWIFTVMM 00000001 SVMM 00000001)",
            "ACPI: FACP 0x00000000000E0070 000114 (v06 SWVMM  SWIFTVMM",
            "ACPI: APIC 0x00000000000E0190 000058 (v04 SWVMM  SWIFTVMM",
            "ACPI: DSDT 0x00000000000E01F0 ",
            "ACPI: LAPIC_NMI (acpi_id[0xff] dfl dfl lint[0x1])",
            "IOAPIC[0]: apic_id 2, version 17, address 0xfec00000, GSI 0-23",
            "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 0 dfl dfl)",
            "ACPI: Using ACPI (MADT) for SMP configuration information",
            "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
            // Hardware-reduced ACPI: Linux leaves the 8259s alone, no ISA IRQ is preallocated.
            "preallocated irqs: 0",
            "APIC: Switch to symmetric I/O mode setup",
        ], timeout: 300)
        Self.report("cloud vmlinux, --cpus 2, ACPI", w)
        #expect(w.allSeen)
        for wrong in ["MADT or MP tables are not detected", "virtual wire mode", "SMP disabled", "ACPI Error", "ACPI BIOS Error"] {
            #expect(!w.output.contains(wrong), "the kernel printed \(wrong)")
        }
    }

    @Test("Debian bzImage: both entries (64-bit at +0x200, 32-bit startup_32) reach its decompressor's console",
          arguments: ["--entry=linux64", "--entry=linux32"])
    func bzImageEntries(entry: String) throws {
        try requireKVMAndGuest()
        let w = try watchVMM(["--pvm-host", entry, "128m", try DebianKernel.path("cloud", "vmlinuz"),
                              "earlyprintk=serial,ttyS0", "nokaslr"],
                             until: ["KASLR disabled: 'nokaslr' on cmdline.\n"], timeout: 120)
        Self.report("bzImage \(entry), decompressor", w)
        #expect(w.allSeen)
        #expect(w.status == 143, "\(w.stderr.suffix(1500))")
    }

    @Test("Debian bzImage (decompresses itself under emulation: slow, SWIFTVMM_LONG_TESTS=1)",
          .enabled(if: longTestsEnabled, "set SWIFTVMM_LONG_TESTS=1 to boot the bzImage (minutes on emulating hosts)"))
    func bzImage() throws {
        let w = try boot(try DebianKernel.path("cloud", "vmlinuz"), timeout: 900)
        Self.report("bzImage via the 64-bit entry", w)
        #expect(w.allSeen)
    }
}
