// swift-tools-version:6.0
// swiftvmm: a small KVM virtual machine monitor in the spirit of lguest's launcher.
//
// The targets are the architecture, bottom to top:
//   CKVM, CLibElf  C headers as system-library modules: <linux/kvm.h> + a shim; libelf, libdw
//   CHost          Linux calls Swift's Glibc module does not export: eventfd, getrandom,
//                  thread names, fallocate, tap devices
//   CAtomics       acquire/release accesses to memory shared with the guest (virtqueue rings)
//   CTeardown      the helper process that takes the VM's teardown off swiftvmm's exit
//   HostSupport    named host threads, the monotonic clock, lines on stderr, JSON, the version
//                  (JSON and the version sit this low because `inspect`, crash reports and
//                  the version hypercall use them, not only the run report and --version)
//   RunControl     how a run ends: outcomes, exit statuses, the stop controller, the
//                  timeline, the --trace switches
//   KVM            /dev/kvm, VMs, vCPUs: thin, typed wrappers around the ioctls
//   Memory         guest RAM: mapping, layout, bounds-checked guest-physical access
//   X86Platform    the PC a kernel wakes up in: the guest-physical layout (every address,
//                  the PCI hole included), e820, the MP table, ACPI tables and AML, CPUID,
//                  boot MSRs, the long-mode and protected-mode entry states
//   KernelLoading  kernel images into guest RAM: ELF, bzImage, the page-offset heuristic,
//                  initrd, command line, boot_params and PVH start info, `inspect`. It uses
//                  X86Platform's layout, never the reverse; the LoadedKernel it returns
//                  (entry mode, ranges, e820) is where the machine and the entry states meet
//   CrashReports   when a run ends badly: fault and crash reports (registers, stacks), oops
//                  decoding, and the symbols and DWARF source lines they are resolved with
//   Backends       where devices' data lives: block images, taps (what a test can replace);
//                  the vhost-user front-end and the virtiofsd it talks to
//   Devices        the I/O bus and one file per device model; interrupts and doorbells
//                  through protocols (Machine implements them over KVM)
//   Hypercalls     the hypercall page at 0x2000 and its handlers
//   Machine        assembles a VM from a configuration and runs the vCPU loops
//   Exec           `swiftvmm exec`'s guest side: the in-memory initramfs (cpio) with the bundled
//                  init (guests/init), the exec.conf it reads, and the kernel modules it loads
//                  (resolved from modules.dep); it needs nothing of the VM, only files
//   swiftvmm       the command line
//
// A boot in those terms: Memory maps the guest's RAM; KernelLoading places the kernel, the
// initrd and the command line and writes boot_params or PVH start info, with X86Platform's
// e820 map and page tables; Machine adds the Devices, writes X86Platform's MP and ACPI tables,
// and puts the boot vCPU in the entry state the LoadedKernel names; its vCPU loop then runs.
import PackageDescription

// SWIFTVMM_FUZZ=1 (scripts/fuzz) makes this the package of the libFuzzer targets in Fuzz/
// instead: the same libraries, the command line as a library (its sources without main.swift,
// so a fuzz target can parse arguments without running anything), one executable per target,
// no swiftvmm executable and no tests. scripts/fuzz builds it with -sanitize=fuzzer,address
// in .build-fuzz, so .build and `swift test` never see it.
let fuzzing = Context.environment["SWIFTVMM_FUZZ"] == "1"
let fuzzTargets = ["elf", "bzimage", "pageoffset", "virtqueue", "virtio-blk", "virtio-net", "virtio-rng",
                   "pci", "serial", "console", "oops", "cli"]

let commandDependencies: [Target.Dependency] = [
    "Machine", "KernelLoading", "Memory", "HostSupport", "RunControl", "Devices", "Exec",
    .product(name: "ArgumentParser", package: "swift-argument-parser"),
]

let package = Package(
    name: "swiftvmm",
    products: fuzzing ? [] : [
        .executable(name: "swiftvmm", targets: ["swiftvmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CKVM", path: "Sources/CKVM"),
        .systemLibrary(name: "CLibElf", path: "Sources/CLibElf", providers: [.apt(["libelf-dev", "libdw-dev"])]),
        .target(name: "KVM", dependencies: ["CKVM"]),
        .target(name: "Memory", dependencies: ["CHost"]),
        .systemLibrary(name: "CHost", path: "Sources/CHost"),
        .systemLibrary(name: "CAtomics", path: "Sources/CAtomics"),
        .systemLibrary(name: "CTeardown", path: "Sources/CTeardown"),
        .target(name: "HostSupport", dependencies: ["CHost"]),
        .target(name: "RunControl", dependencies: ["HostSupport", "CHost"]),
        .target(name: "X86Platform", dependencies: ["CKVM", "Memory", "HostSupport"]),
        .target(name: "KernelLoading", dependencies: ["Memory", "X86Platform", "HostSupport", "RunControl", "CLibElf"]),
        .target(name: "CrashReports", dependencies: ["CKVM", "KVM", "Memory", "HostSupport", "KernelLoading", "CLibElf"]),
        .target(name: "Backends", dependencies: ["CHost"]),
        .target(name: "Devices", dependencies: ["Memory", "HostSupport", "RunControl", "Backends", "CHost", "CAtomics"]),
        .target(name: "Hypercalls", dependencies: [
            "KVM", "Memory", "HostSupport", "RunControl", "X86Platform", "Devices", "CHost",
        ]),
        .target(name: "Machine", dependencies: [
            "KVM", "Memory", "HostSupport", "RunControl", "X86Platform", "KernelLoading", "CrashReports", "Backends",
            "Devices", "Hypercalls", "CTeardown",
        ]),
        .target(name: "Exec", dependencies: ["HostSupport"]),
    ] + (fuzzing ? [] : [
        .executableTarget(name: "swiftvmm", dependencies: commandDependencies),
        .testTarget(name: "SwiftVMMTests", dependencies: [
            "KVM", "Memory", "HostSupport", "RunControl", "X86Platform", "KernelLoading", "CrashReports", "Backends", "Devices", "Hypercalls",
            "Machine", "Exec", "swiftvmm",
        ]),
    ]) + (!fuzzing ? [] : [
        .target(name: "swiftvmm", dependencies: commandDependencies, path: "Sources/swiftvmm", exclude: ["main.swift"]),
        .systemLibrary(name: "CFuzzer", path: "Fuzz/CFuzzer"),
        .target(name: "FuzzSupport", dependencies: [
            "CFuzzer", "Memory", "HostSupport", "Backends", "Devices", "RunControl", "KernelLoading", "X86Platform",
        ], path: "Fuzz/Support"),
    ] + fuzzTargets.map { name in
        .executableTarget(name: "fuzz-\(name)", dependencies: [
            "FuzzSupport", "Memory", "HostSupport", "RunControl", "X86Platform", "KernelLoading", "CrashReports",
            "Backends", "Devices", "swiftvmm",
        ], path: "Fuzz/Targets/\(name)",
        // Its @main hands the process to libFuzzer (runLibFuzzer).
        swiftSettings: [.unsafeFlags(["-parse-as-library"])])
    })
)
