import Devices
import Foundation
import KernelLoading
import Memory
import RunControl
import Testing
import X86Platform

/// Read boot_params back from guest memory.
func zeroPage(in memory: GuestMemory) -> ZeroPage {
    var zp = ZeroPage()
    zp.bytes = memory.bytes(at: BootLayout.zeroPage, count: ZeroPage.size)
    return zp
}

func e820(from zp: ZeroPage) -> [E820Entry] {
    (0..<Int(zp.bytes[ZeroPage.e820Entries])).map { i in
        let at = ZeroPage.e820Table + i * 20
        return E820Entry(address: zp.get(UInt64.self, at: at), size: zp.get(UInt64.self, at: at + 8),
                         type: E820Entry.Kind(rawValue: zp.get(UInt32.self, at: at + 16))!)
    }
}

let hypercallPage: Range<UInt64> = 0x2000 ..< 0x3000

@Suite("Linux boot structures")
struct LinuxBootStructureTests {
    @Test("e820 for several memory sizes: low RAM, reserved areas, the PCI hole, RAM above 4 GiB",
          arguments: [UInt64(32 << 20), 1 << 30, 3 << 30, 5 << 30])
    func e820Layout(size: UInt64) throws {
        let memory = try GuestMemory(size: size)
        let map = KernelLoader.e820(memory: memory, reserved: [hypercallPage])
        let low = min(size, GuestMemory.lowMemoryLimit)
        var expected = [
            E820Entry(address: 0, size: 0x2000, type: .ram),
            E820Entry(address: 0x2000, size: 0x1000, type: .reserved),
            E820Entry(address: 0x3000, size: 0x9FC00 - 0x3000, type: .ram),
            E820Entry(address: 0x9FC00, size: 0x100000 - 0x9FC00, type: .reserved),
            E820Entry(address: 0x100000, size: low - 0x100000, type: .ram),
        ]
        if size > GuestMemory.lowMemoryLimit {
            // Nothing between 3 GiB and 4 GiB (the 32-bit PCI hole), the rest above 4 GiB.
            expected.append(E820Entry(address: 4 << 30, size: size - low, type: .ram))
        }
        #expect(map == expected)
        #expect(map.filter { $0.type == .ram }.reduce(0) { $0 + $1.size } == size - 0x1000 - (0x100000 - 0x9FC00))
    }

    @Test("a bzImage's boot_params: the image's setup header, loader fields, command line, initrd, e820")
    func bzImageZeroPage() throws {
        let path = try DebianKernel.path("cloud", "vmlinuz")
        let file = try DebianKernel.bytes("cloud", "vmlinuz")
        let initrd = try makeInitrd(size: 300_000)
        let memory = try GuestMemory(size: 256 << 20)
        let k = try KernelLoader.load(path: path, into: memory, options: BootOptions(
            commandLine: "root=/dev/vda", initrdPath: initrd, reserved: [hypercallPage]))
        #expect(k.format == "bzImage")
        #expect(k.commandLine == "root=/dev/vda console=ttyS0")
        #expect(k.entry == .longMode64(entry: 0x1000200, bootParams: BootLayout.zeroPage))
        let zp = zeroPage(in: memory)
        #expect(zp.get(UInt32.self, at: ZeroPage.headerMagic) == 0x5372_6448)     // "HdrS"
        #expect(zp.get(UInt16.self, at: ZeroPage.version) == 0x020F)
        #expect(zp.get(UInt16.self, at: ZeroPage.bootFlag) == 0xAA55)
        #expect(zp.bytes[ZeroPage.typeOfLoader] == 0xFF)
        #expect(zp.bytes[ZeroPage.loadFlags] & 0x81 == 0x81)                       // LOADED_HIGH | CAN_USE_HEAP
        #expect(zp.get(UInt32.self, at: ZeroPage.code32Start) == 0x1000000)
        #expect(zp.get(UInt32.self, at: ZeroPage.cmdLinePtr) == UInt32(BootLayout.commandLine))
        let line = memory.bytes(at: BootLayout.commandLine, count: 64).prefix { $0 != 0 }
        #expect(String(decoding: line, as: UTF8.self) == "root=/dev/vda console=ttyS0")
        // The initrd: page-aligned, at the top of RAM (below initrd_addr_max), bytes intact.
        let image = zp.get(UInt32.self, at: ZeroPage.ramdiskImage)
        #expect(zp.get(UInt32.self, at: ZeroPage.ramdiskSize) == 300_000)
        #expect(image % 4096 == 0)
        #expect(UInt64(image) == ((256 << 20) - 300_000) & ~0xFFF)
        #expect(k.initrd == UInt64(image) ..< UInt64(image) + 300_000)
        #expect(memory.bytes(at: UInt64(image), count: 300_000) == Array(try Data(contentsOf: URL(fileURLWithPath: initrd))))
        #expect(e820(from: zp) == k.e820)
        #expect(k.e820 == KernelLoader.e820(memory: memory, reserved: [hypercallPage]))
        // The protected-mode kernel at its preferred address, 1 MiB-aligned.
        let setupSects = Int(file[0x1F1])
        let pm = Array(file[((setupSects + 1) * 512)...].prefix(4096))
        #expect(memory.bytes(at: 0x1000000, count: pm.count) == pm)
    }

    @Test("an ELF vmlinux: segments at their physical addresses, PVH chosen, start info complete")
    func vmlinuxPVH() throws {
        let path = try DebianKernel.path("cloud", "vmlinux")
        let initrd = try makeInitrd(size: 300_000)
        let memory = try GuestMemory(size: 128 << 20)
        let k = try KernelLoader.load(path: path, into: memory, options: BootOptions(
            commandLine: "earlyprintk=serial,ttyS0", initrdPath: initrd, reserved: [hypercallPage]))
        #expect(k.format == "ELF64")
        #expect(k.entry == .pvh(entry: 0x1000850, startInfo: BootLayout.pvhStartInfo))
        #expect(k.loadedRanges.first?.lowerBound == 0x1000000)
        let info = memory.bytes(at: BootLayout.pvhStartInfo, count: 4096)
        func u32(_ o: Int) -> UInt32 { info[o..<o + 4].enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * $1.offset) } }
        func u64(_ o: Int) -> UInt64 { info[o..<o + 8].enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) } }
        #expect(u32(0) == 0x336E_C578)
        #expect(u32(4) == 1)
        #expect(u32(12) == 1)                                     // one module: the initrd
        let mod = Int(u64(16) - BootLayout.pvhStartInfo)
        #expect(u64(mod) == k.initrd?.lowerBound)
        #expect(u64(mod + 8) == 300_000)
        #expect(u64(24) == BootLayout.commandLine)
        let map = Int(u64(40) - BootLayout.pvhStartInfo)
        #expect(Int(u32(48)) == k.e820.count)
        for (i, e) in k.e820.enumerated() {
            #expect(u64(map + i * 24) == e.address && u64(map + i * 24 + 8) == e.size && u32(map + i * 24 + 16) == e.type.rawValue)
        }
        // --entry=linux64 on the same image: boot_params instead, RIP at the ELF entry.
        let m2 = try GuestMemory(size: 128 << 20)
        let k2 = try KernelLoader.load(path: path, into: m2, options: BootOptions(commandLine: "", entry: .linux64))
        #expect(k2.entry == .longMode64(entry: 0x1000000, bootParams: BootLayout.zeroPage))
    }

    @Test("initrd placement: page-aligned at the top of low RAM, under the limit, or a clear error")
    func initrdPlacement() throws {
        let m = try GuestMemory(size: 64 << 20)
        let r = try Initrd.place(size: 10_000, memory: m, above: 0x200000, maxAddress: 0x37FF_FFFF, path: "i")
        #expect(r.lowerBound == (64 << 20) - 12288 && r.count == 10_000)
        let capped = try Initrd.place(size: 10_000, memory: m, above: 0x200000, maxAddress: 0x1FF_FFFF, path: "i")
        #expect(capped.upperBound <= 0x200_0000 && capped.lowerBound % 4096 == 0)
        let big = try GuestMemory(size: 5 << 30)
        let low = try Initrd.place(size: 1 << 20, memory: big, above: 0x200000, maxAddress: 0x7FFF_FFFF, path: "i")
        #expect(low.upperBound <= 0x8000_0000)
        #expect(throws: BootError.self) { try Initrd.place(size: 64 << 20, memory: m, above: 0x200000, maxAddress: 0x37FF_FFFF, path: "i") }
        #expect(throws: BootError.self) { try Initrd.place(size: 63 << 20, memory: m, above: 0x200000, maxAddress: 0x37FF_FFFF, path: "i") }
    }

    @Test("the MP table: checksums, processors, IOAPIC, ISA routing")
    func mpTable() {
        let t = MPTable(cpus: 2)
        let b = t.bytes
        #expect(Array(b[0..<4]) == Array("_MP_".utf8))
        #expect(b[0..<16].reduce(UInt8(0), &+) == 0)
        #expect(b[8] == 1 && b[9] == 4)
        let tableAt = Int(UInt32(b[4]) | UInt32(b[5]) << 8 | UInt32(b[6]) << 16 | UInt32(b[7]) << 24) - Int(BootLayout.mpTable)
        #expect(tableAt == 16)
        #expect(Array(b[16..<20]) == Array("PCMP".utf8))
        let length = Int(b[20]) | Int(b[21]) << 8
        #expect(16 + length == b.count)
        #expect(b[16..<(16 + length)].reduce(UInt8(0), &+) == 0)
        let count = Int(b[16 + 34]) | Int(b[16 + 35]) << 8
        #expect(count == 2 + 1 + 1 + 16 + 2)
        // Processors: APIC IDs 0 and 1, the first is the bootstrap processor.
        let p0 = 16 + 44, p1 = p0 + 20
        #expect(b[p0] == 0 && b[p0 + 1] == 0 && b[p0 + 3] == 3)
        #expect(b[p1] == 0 && b[p1 + 1] == 1 && b[p1 + 3] == 1)
        let ioapic = p1 + 20 + 8
        #expect(b[ioapic] == 2 && b[ioapic + 1] == 2 && b[ioapic + 3] == 1)
        #expect(Array(b[(ioapic + 4)..<(ioapic + 8)]) == [0x00, 0x00, 0xC0, 0xFE])
        for irq in 0..<16 {
            let e = ioapic + 8 + irq * 8
            #expect(b[e] == 3 && b[e + 5] == UInt8(irq) && b[e + 7] == UInt8(irq))
        }
        #expect(MPTable(cpus: 8).bytes.count == b.count + 6 * 20)
    }

    @Test("console=ttyS0 is added to Linux command lines that name no console, unless turned off")
    func serialConsole() {
        let o = BootOptions(commandLine: "root=/dev/vda")
        #expect(o.effectiveCommandLine(isLinux: true) == "root=/dev/vda console=ttyS0")
        #expect(o.effectiveCommandLine(isLinux: false) == "root=/dev/vda")
        #expect(BootOptions(commandLine: "console=hvc0").effectiveCommandLine(isLinux: true) == "console=hvc0")
        #expect(BootOptions(commandLine: "").effectiveCommandLine(isLinux: true) == "console=ttyS0")
        #expect(BootOptions(commandLine: "a", addSerialConsole: false).effectiveCommandLine(isLinux: true) == "a")
    }

    @Test("CMOS clock in BCD from the host's time; i8042 self-test and command byte")
    func legacyDevices() {
        // 2024-02-29 13:45:56 UTC, a Thursday.
        let cmos = CMOS(clock: { 1_709_214_356 })
        func reg(_ i: UInt64) -> UInt64 { cmos.write(offset: 0, size: 1, value: i); return cmos.read(offset: 1, size: 1) }
        #expect([reg(0), reg(2), reg(4), reg(6), reg(7), reg(8), reg(9), reg(0x32)] == [0x56, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20])
        #expect(reg(0x0A) & 0x80 == 0)                              // never "update in progress"
        #expect(reg(0x0D) == 0x80)
        cmos.write(offset: 0, size: 1, value: 0x40); cmos.write(offset: 1, size: 1, value: 0x5A)
        #expect(reg(0x40) == 0x5A)
        #expect(reg(0x80 | 0x40) == 0x5A)                            // bit 7 is the NMI mask, not the index
        let stop = StopController()
        let kbd = I8042(stop: stop)
        #expect(kbd.read(offset: 4, size: 1) & 0x14 == 0x14)        // self-tested, keyboard not inhibited
        kbd.write(offset: 4, size: 1, value: 0xAA)
        #expect(kbd.read(offset: 4, size: 1) & 1 == 1)
        #expect(kbd.read(offset: 0, size: 1) == 0x55)
        #expect(kbd.read(offset: 4, size: 1) & 1 == 0)
        kbd.write(offset: 4, size: 1, value: 0x60); kbd.write(offset: 0, size: 1, value: 0x47)
        kbd.write(offset: 4, size: 1, value: 0x20)
        #expect(kbd.read(offset: 0, size: 1) == 0x47)
        #expect(stop.outcome == nil)
        kbd.write(offset: 4, size: 1, value: 0xFE)
        #expect(stop.outcome == .reboot)
    }

    @Test("ACPI sleep control: SLP_EN with sleep type 5 (\\_S5) is a clean shutdown; anything else is ignored")
    func acpiSleepControl() {
        let stop = StopController()
        let sleep = ACPISleepControl(stop: stop)
        sleep.write(offset: 1, size: 1, value: 0x80)            // clear WAK_STS in the status register
        sleep.write(offset: 0, size: 1, value: 5 << 2)          // the type without SLP_EN
        sleep.write(offset: 0, size: 1, value: 3 << 2 | 0x20)   // S3 is not offered
        #expect(sleep.read(offset: 1, size: 1) == 0)
        #expect(stop.outcome == nil)
        sleep.write(offset: 0, size: 1, value: 5 << 2 | 0x20)   // what Linux's acpi_power_off writes
        #expect(stop.outcome == .shutdown)
    }

    @Test("--pvm-host clears CX16 and the KVM features that lead to vmcall, nothing else")
    func pvmHostCPUID() {
        let leaf1 = kvm_cpuid_entry2_for_tests(function: 1, eax: 0x806F8, ebx: 0, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF)
        let kvm = kvm_cpuid_entry2_for_tests(function: 0x4000_0001, eax: 0xFFFF_FFFF, ebx: 0, ecx: 0, edx: 0)
        let plain = CPUID.entries(supported: [leaf1, kvm], vcpuID: 1, vcpuCount: 2)
        #expect(plain[0].ecx & (1 << 13) != 0 && plain[1].eax == 0xFFFF_FFFF)
        #expect(plain[0].ebx >> 24 == 1)                              // APIC ID of vCPU 1
        let pvm = CPUID.entries(supported: [leaf1, kvm], vcpuID: 0, vcpuCount: 1, pvmHost: true)
        #expect(pvm[0].ecx & (1 << 13) == 0)
        #expect(pvm[0].ecx | (1 << 13) == 0xFFFF_FFFF)
        let vmcallFeatures: UInt32 = 1 << 7 | 1 << 11 | 1 << 13 | 1 << 16
        #expect(pvm[1].eax == ~vmcallFeatures)
    }
}
