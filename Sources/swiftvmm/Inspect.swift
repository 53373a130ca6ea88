import ArgumentParser
import Glibc
import HostSupport
import KernelLoading
import RunControl

/// `swiftvmm inspect <file> [--json]`: what the loaders see in a kernel image, without
/// booting it.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what swiftvmm's loaders see in a kernel image, without booting it.",
        discussion: """
        Prints the format (bzImage, ELF64, ELF32, unknown), the boot protocol version, the \
        kernel version string, the payload compression, the entry points (32-bit, 64-bit, PVH), \
        the load segments with their virtual -> physical mapping, and the page offset found in \
        the image's code and how it was found. Exits 0 when the image is one swiftvmm can load, \
        65 when it is malformed or not a kernel, 66 when the file cannot be read.
        """)

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    @Argument(help: ArgumentHelp("A kernel image: vmlinux (ELF) or bzImage.", valueName: "file"))
    var file: String

    func run() throws {
        let info: KernelInspection
        do {
            info = try KernelInspection.inspect(path: file)
        } catch {
            fail(error.description, code: error.exitCode)
        }
        print(json ? info.json : info.text)
        Glibc.exit(info.problem == nil ? ExitStatus.success : ExitStatus.malformedImage)
    }
}
