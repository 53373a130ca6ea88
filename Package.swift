// swift-tools-version:6.0
// swiftvmm: a small KVM virtual machine monitor in the spirit of lguest's launcher.
//
// The targets are the architecture, bottom to top:
//   CKVM, CLibElf  C headers (<linux/kvm.h> + a shim, libelf) as system-library modules
//   KVM            /dev/kvm, VMs, vCPUs: thin, typed wrappers around the ioctls
//   Memory         guest RAM: mapping, layout, bounds-checked guest-physical access
//   Lifecycle      how a run ends (outcomes, stop requests), tracing and counters
//   Boot           kernel loaders and the CPU/memory state a kernel is entered with
//   Backends       where devices' data lives: block images, taps (what a test can replace)
//   Devices        the I/O bus and one file per device model; interrupts and doorbells
//                  through protocols (Machine implements them over KVM)
//   Hypercalls     the hypercall page at 0x2000 and its handlers
//   Machine        assembles a VM from a configuration and runs the vCPU loops
//   swiftvmm       the command line
import PackageDescription

let package = Package(
    name: "swiftvmm",
    products: [
        .executable(name: "swiftvmm", targets: ["swiftvmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CKVM", path: "Sources/CKVM"),
        .systemLibrary(name: "CLibElf", path: "Sources/CLibElf", providers: [.apt(["libelf-dev", "libdw-dev"])]),
        .target(name: "KVM", dependencies: ["CKVM"]),
        .target(name: "Memory"),
        .systemLibrary(name: "CSystem", path: "Sources/CSystem"),
        .target(name: "Lifecycle", dependencies: ["CSystem"]),
        .target(name: "Boot", dependencies: ["KVM", "Memory", "Lifecycle", "CLibElf"]),
        .target(name: "Backends", dependencies: ["CSystem"]),
        .target(name: "Devices", dependencies: ["Memory", "Lifecycle", "Backends", "CSystem"]),
        .target(name: "Hypercalls", dependencies: ["KVM", "Memory", "Lifecycle", "Devices", "CSystem"]),
        .target(name: "Machine", dependencies: ["KVM", "Memory", "Lifecycle", "Boot", "Backends", "Devices", "Hypercalls", "CSystem"]),
        .executableTarget(name: "swiftvmm", dependencies: [
            "Machine", "Boot", "Memory", "Lifecycle", "Devices",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "SwiftVMMTests", dependencies: [
            "KVM", "Memory", "Lifecycle", "Boot", "Backends", "Devices", "Hypercalls", "Machine", "swiftvmm",
        ]),
    ]
)
