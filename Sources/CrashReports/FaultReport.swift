import CKVM
import HostSupport
import KVM
import Memory

/// What a user needs first when the guest hits something the VMM cannot continue from: which
/// exit, on which vCPU, where (RIP), and the instruction bytes there. Taken on the faulting
/// vCPU's thread, at the moment of the exit; `CrashReport` adds every vCPU's registers.
public struct FaultReport {
    public let summary: String
    public let text: String

    public init(vcpu: VCPU, memory: GuestMemory, reason: UInt32, run: UnsafeMutablePointer<kvm_run>) {
        let regs = try? vcpu.regs()
        let rip = regs?.rip ?? 0
        var what: String
        var insn: [UInt8] = []
        switch reason {
        case SKVM_EXIT_SHUTDOWN:
            what = "triple fault (KVM_EXIT_SHUTDOWN)"
        case SKVM_EXIT_INTERNAL_ERROR:
            let sub = skvm_internal_suberror(run)
            if sub == SKVM_INTERNAL_ERROR_EMULATION {
                what = "instruction emulation failed (KVM_EXIT_INTERNAL_ERROR, suberror 1)"
                // Newer kernels hand over the bytes the emulator fetched; otherwise read them
                // from guest memory through the guest's page tables.
                if skvm_emulation_flags(run) & 1 != 0 && skvm_internal_ndata(run) >= 2 {
                    let n = Int(min(skvm_emulation_insn_size(run), 15))
                    let bytes = skvm_emulation_insn_bytes(run)!
                    insn = (0..<n).map { bytes[$0] }
                }
            } else {
                let data = (0..<min(skvm_internal_ndata(run), 16)).map { Diagnostics.hex(skvm_internal_data(run, $0)) }
                what = "KVM internal error (suberror \(sub), data [\(data.joined(separator: ", "))])"
            }
        case SKVM_EXIT_FAIL_ENTRY:
            what = "VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason \(Diagnostics.hex(skvm_fail_entry_reason(run))))"
        case SKVM_EXIT_HLT:
            what = "guest halted with no way to wake (KVM_EXIT_HLT)"
        case SKVM_EXIT_SYSTEM_EVENT:
            what = "system event \(skvm_system_event_type(run)) (KVM_EXIT_SYSTEM_EVENT)"
        default:
            what = "unexpected exit \(Self.exitReasonName(reason))"
        }
        if insn.isEmpty, let physical = vcpu.translate(rip) {
            insn = memory.bytes(at: physical, count: 15)
        }
        summary = "\(what) on vCPU \(vcpu.id) at RIP \(Diagnostics.hex(rip, width: 16))"
        var lines = ["swiftvmm: \(summary)"]
        if !insn.isEmpty {
            lines.append("  instruction bytes at RIP: " + insn.map(hexByte).joined(separator: " "))
        }
        text = lines.joined(separator: "\n")
    }

    static func format(regs r: kvm_regs) -> [String] {
        func x(_ v: UInt64) -> String { Diagnostics.hex(v, width: 16) }
        return [
            "  rax=\(x(r.rax)) rbx=\(x(r.rbx)) rcx=\(x(r.rcx)) rdx=\(x(r.rdx))",
            "  rsi=\(x(r.rsi)) rdi=\(x(r.rdi)) rbp=\(x(r.rbp)) rsp=\(x(r.rsp))",
            "  r8 =\(x(r.r8)) r9 =\(x(r.r9)) r10=\(x(r.r10)) r11=\(x(r.r11))",
            "  r12=\(x(r.r12)) r13=\(x(r.r13)) r14=\(x(r.r14)) r15=\(x(r.r15))",
            "  rip=\(x(r.rip)) rflags=\(x(r.rflags))",
        ]
    }

    static func format(sregs s: kvm_sregs) -> [String] {
        func x(_ v: UInt64) -> String { Diagnostics.hex(v, width: 16) }
        func seg(_ name: String, _ g: kvm_segment) -> String {
            "\(name)=\(Diagnostics.hex(g.selector, width: 4)) base=\(x(g.base)) limit=\(Diagnostics.hex(g.limit, width: 8)) type=\(g.type) l=\(g.l) db=\(g.db)"
        }
        return [
            "  " + seg("cs", s.cs), "  " + seg("ss", s.ss), "  " + seg("ds", s.ds),
            "  cr0=\(x(s.cr0)) cr2=\(x(s.cr2)) cr3=\(x(s.cr3)) cr4=\(x(s.cr4)) efer=\(x(s.efer))",
            "  gdt=\(x(s.gdt.base))/\(Diagnostics.hex(s.gdt.limit)) idt=\(x(s.idt.base))/\(Diagnostics.hex(s.idt.limit))",
        ]
    }

    public static func exitReasonName(_ reason: UInt32) -> String {
        switch reason {
        case SKVM_EXIT_UNKNOWN: return "KVM_EXIT_UNKNOWN"
        case SKVM_EXIT_EXCEPTION: return "KVM_EXIT_EXCEPTION"
        case SKVM_EXIT_IO: return "KVM_EXIT_IO"
        case SKVM_EXIT_HYPERCALL: return "KVM_EXIT_HYPERCALL"
        case SKVM_EXIT_DEBUG: return "KVM_EXIT_DEBUG"
        case SKVM_EXIT_HLT: return "KVM_EXIT_HLT"
        case SKVM_EXIT_MMIO: return "KVM_EXIT_MMIO"
        case SKVM_EXIT_IRQ_WINDOW_OPEN: return "KVM_EXIT_IRQ_WINDOW_OPEN"
        case SKVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN"
        case SKVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY"
        case SKVM_EXIT_INTR: return "KVM_EXIT_INTR"
        case SKVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR"
        case SKVM_EXIT_SYSTEM_EVENT: return "KVM_EXIT_SYSTEM_EVENT"
        case SKVM_EXIT_X86_RDMSR: return "KVM_EXIT_X86_RDMSR"
        case SKVM_EXIT_X86_WRMSR: return "KVM_EXIT_X86_WRMSR"
        default: return "exit reason \(reason)"
        }
    }
}
