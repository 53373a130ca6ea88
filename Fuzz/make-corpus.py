#!/usr/bin/env python3
"""Writes the seed corpora in Fuzz/corpus/<target>/: small inputs that reach each target's
interesting states (a running virtio device serving requests, an oops on the console, a
kernel image the loader accepts), from which libFuzzer's mutations start. Run it again after
changing a target's input format; the files it writes are committed."""
import os, struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def seed(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))

u8 = lambda v: struct.pack("<B", v & 0xFF)
u16 = lambda v: struct.pack("<H", v & 0xFFFF)
u32 = lambda v: struct.pack("<I", v & 0xFFFFFFFF)
u64 = lambda v: struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)

# ---- Virtio programs (Fuzz/Support/VirtioDriver.swift's opcodes) ----
def data_addr(a):             # an address in the data area: selector 0, then (a - 0x8000) / 2
    return u8(0) + u16((a - 0x8000) // 2)
def set_up(q=0, size_log=3, reset=True, features=~0):
    return u8(2) + u8(q) + u8(size_log) + u8(1 if reset else 0) + u64(features)
def desc(q, i, addr, length, flags, nxt):
    return u8(4) + u8(q) + u8(i) + data_addr(addr) + u8(0) + u16(length) + u8(flags) + u16(nxt)
def mem(addr, data):
    return u8(3) + data_addr(addr) + u8(len(data)) + bytes(data)
def post(q, head): return u8(6) + u8(q) + u16(head)
def process(q): return u8(8) + u8(q)
NEXT, WRITE, INDIRECT = 1, 2, 4

def blk_request(kind, sector, data_len, data_writable, extra=b""):
    p = mem(0x9000, u32(kind) + u32(0) + u64(sector) + extra)
    p += desc(0, 0, 0x9000, 16 + len(extra), NEXT, 1)
    if data_len:
        p += desc(0, 1, 0xA000, data_len, NEXT | (WRITE if data_writable else 0), 2)
        p += desc(0, 2, 0xB000, 1, WRITE, 0)
    else:
        p += desc(0, 1, 0xB000, 1, WRITE, 0)
    return p + post(0, 0) + process(0)

seed("virtio-blk", "read", u8(0) + u8(16) + set_up() + blk_request(0, 1, 512, True))
seed("virtio-blk", "write", u8(0) + u8(16) + set_up() + blk_request(1, 2, 1024, False))
seed("virtio-blk", "flush-getid", u8(0) + u8(16) + set_up() + blk_request(4, 0, 0, False) + blk_request(8, 0, 20, True))
seed("virtio-blk", "discard", u8(0) + u8(16) + set_up() + blk_request(11, 0, 0, False, u64(1) + u32(2) + u32(0)))
seed("virtio-blk", "write-zeroes-failing", u8(0xFF) + u8(16) + set_up() + blk_request(13, 0, 0, False, u64(3) + u32(1) + u32(1)))
seed("virtio-blk", "indirect", u8(0) + u8(16) + set_up() + mem(0x9000, u32(0) + u32(0) + u64(0))
     + u8(5) + u16(0x1000) + data_addr(0x9000) + u8(0) + u16(16) + u8(NEXT) + u16(1)       # table at 0x9000: entry 0
     + u8(5) + u16(0x1010) + data_addr(0xA000) + u8(0) + u16(512) + u8(NEXT | WRITE) + u16(2)
     + u8(5) + u16(0x1020) + data_addr(0xB000) + u8(0) + u16(1) + u8(WRITE) + u16(0)
     + desc(0, 0, 0x9000, 48, INDIRECT, 0) + post(0, 0) + process(0))

seed("virtio-rng", "fill", set_up(size_log=2) + desc(0, 0, 0xA000, 64, WRITE | NEXT, 1) + desc(0, 1, 0xB000, 32, WRITE, 0)
     + post(0, 0) + process(0) + u8(9) + u8(0) + u8(0))
seed("virtio-rng", "msix", set_up(size_log=2) + u8(13) + u8(0x42) + u8(1) + u8(1) + u32(0xC000)
     + u8(10) + u8(0) + u8(0) + u32(0xFEE00000) + u8(0) + u8(10) + u8(0) + u8(3) + u32(0) + u8(0)
     + desc(0, 0, 0xA000, 16, WRITE, 0) + post(0, 0) + process(0))

frame = lambda n, b=0x11: u8(15) + u32(n) + u8(b)
seed("virtio-net", "receive", set_up(0, 3) + set_up(1, 3, reset=False) + desc(0, 0, 0xA000, 2048, WRITE, 0) + post(0, 0)
     + frame(200) + process(0))
seed("virtio-net", "receive-mergeable", set_up(0, 3, features=1 << 15 | 1 << 32) + set_up(1, 3, reset=False)
     + desc(0, 0, 0xA000, 1024, WRITE, 0) + desc(0, 1, 0xC000, 1024, WRITE, 0) + post(0, 0) + post(0, 1)
     + frame(1800) + process(0))
seed("virtio-net", "transmit", set_up(0, 3) + set_up(1, 3, reset=False) + desc(1, 0, 0xA000, 12, NEXT, 1)
     + desc(1, 1, 0xB000, 60, 0, 0) + post(1, 0) + process(1))

# ---- The split-ring walker: shape, placement, 16 control bytes, then desc table + avail ----
def ring(size_log, descs, heads, control=bytes([1, 2, 9, 17, 33, 0, 4, 3] * 2), shape_extra=0):
    size = 1 << size_log
    table = b"".join(u64(a) + u32(l) + u16(f) + u16(n) for a, l, f, n in descs)
    table += b"\0" * (16 * size - len(table))
    avail = u16(0) + u16(len(heads)) + b"".join(u16(h) for h in heads)
    return u8(size_log | shape_extra) + u8(0) + control + table + avail
seed("virtqueue", "chain", ring(3, [(0x4000, 16, NEXT, 1), (0x5000, 512, NEXT | WRITE, 2), (0x6000, 1, WRITE, 0)], [0]))
seed("virtqueue", "indirect", ring(3, [(0x9000, 48, INDIRECT, 0)], [0, 0]))
seed("virtqueue", "event-idx", ring(2, [(0x4000, 64, WRITE, 0), (0x800, 8, WRITE, 0)], [0, 1, 0], shape_extra=0x10))

# ---- PCI: slot byte, opcode byte, operands ----
pci = b""
pci += u8(1) + u8(3) + u8(0)                                   # probe BAR 0 of slot 1
pci += u8(1) + u8(4) + u16(0x0006)                             # memory decoding + bus master
pci += u8(1) + u8(5) + u16(0x8000)                             # MSI-X enable
pci += u8(1) + u8(6) + u16(0x3000) + u8(2) + u8(0) + u64(0xFEE00000)
pci += u8(2) + u8(7) + u32(0xD0000000) + u8(2) + u8(4) + u16(6)
pci += u8(0) + u8(0) + u32(0x80000800) + u8(1) + u8(1) + u8(0) + u8(2) + u8(0)
seed("pci", "bars-msix", pci)

# ---- Serial: opcode byte (port << 4 | kind), operands ----
def w(port, v): return u8(port << 4 | 0) + u8(v)
def r(port): return u8(port << 4 | 2)
def rx(data): return u8(3) + u8(len(data)) + bytes(data)
seed("serial", "loopback-fifo", w(3, 0x80) + w(0, 1) + w(1, 0) + w(3, 3) + w(2, 7) + w(4, 0x1F) + w(1, 0x0F)
     + w(0, 0x41) + w(0, 0x42) + r(5) + r(2) + r(0) + r(0) + r(6) + w(4, 0x0B) + rx(b"hello") + r(0) + w(2, 0) + r(0))
seed("serial", "irq", w(1, 0x03) + r(2) + rx(b"x") + r(2) + r(0) + w(0, 0x0A) + r(2) + r(5) + r(7) + w(7, 0x55) + r(7))

# ---- Console and oops text ----
oops_text = (b"[    0.000000] Linux version 6.1.0\n[    1.100000] Run /init as init process\n"
             b"[    2.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
             b"[    2.000001] RIP: 0010:kernel_init+0x77/0x106\n[    2.000002] Call Trace:\n"
             b"[    2.000003]  <TASK>\n[    2.000004]  ? do_one_initcall+0x41/0x1e0\n"
             b"[    2.000005]  start_kernel+0xffffffffffffffff/0x10\n  rest_init+0x1a/0x20 [mod]\n"
             b"[    2.000006]  </TASK>\n[    2.000007] Kernel panic - not syncing: Attempted to kill init!\n"
             b"[    2.000008] ---[ end Kernel panic - not syncing: Attempted to kill init! ]---\n")
seed("console", "oops-panic", u8(1) + oops_text)
seed("console", "login", u8(0) + b"Run /init\r\nsome output\ndebian login: \nreboot: Power down\n")
system_map = (b"ffffffff81000000 T _text\nffffffff81001000 T start_kernel\nffffffff81001400 t rest_init\n"
              b"ffffffff81002000 T kernel_init\nffffffff81003000 T do_one_initcall\nffffffff81004000 W panic\n"
              b"ffffffffffffff00 T top_of_memory\n0000000000001000 D data_symbol\n")
seed("oops", "decode", system_map + b"\0" + b"0010:kernel_init+0x77/0x106\n? do_one_initcall+0x41/0x1e0\n"
     b"start_kernel+0x0/0x10\ntop_of_memory+0xffffffffffffffff/0x1\nrest_init+0x1a/0x20 [mod]\n0xffffffff81000000\n")

# ---- Command lines (NUL-separated words) ----
def cli(*words): return b"\0".join(w.encode() for w in words)
seed("cli", "run", cli("--timeout=5m", "--expect=Run /init", "--fail-on=BUG", "--cpus", "2", "64m", "vmlinux", "console=ttyS0"))
seed("cli", "devices", cli("--block=rootfs.img", "--block=data.img,ro", "--tunnet=tap0,mac=52:54:00:12:34:56", "--rng",
                           "--trace=io,guest-errors", "--debug-exit", "128m", "bzImage", "--", "-x", "--y"))
seed("cli", "inspect", cli("inspect", "vmlinux", "--json"))
seed("cli", "entry", cli("--entry=pvh", "--initrd=i.img", "--no-serial-console", "--pvm-host", "--report=r.json", "1g", "k", "ro"))

# ---- Kernel images ----
def elf(elf64, entry, segs, notes=b""):
    """segs: (type, flags, vaddr, paddr, contents, memsz)."""
    eh, ph = (64, 56) if elf64 else (52, 32)
    off = eh + ph * len(segs)
    out = b"\x7fELF" + bytes([2 if elf64 else 1, 1, 1, 0]) + b"\0" * 8
    out += u16(2) + u16(62 if elf64 else 3) + u32(1)
    out += (u64(entry) + u64(eh) + u64(0)) if elf64 else (u32(entry) + u32(eh) + u32(0))
    out += u32(0) + u16(eh) + u16(ph) + u16(len(segs)) + u16(64 if elf64 else 40) + u16(0) + u16(0)
    body = b""
    for t, f, v, p, c, m in segs:
        if elf64: out += u32(t) + u32(f) + u64(off) + u64(v) + u64(p) + u64(len(c)) + u64(m) + u64(0x1000)
        else: out += u32(t) + u32(off) + u32(v) + u32(p) + u32(len(c)) + u32(m) + u32(f) + u32(0x1000)
        off += len(c)
        body += c
    return out + body

pvh_note = u32(4) + u32(4) + u32(18) + b"Xen\0" + u32(0x100000)
code = b"\x90" * 16 + b"Linux version 6.1.0 (fuzz) #1\0"
seed("elf", "elf64-pvh", elf(True, 0x100000, [(1, 5, 0x100000, 0x100000, code, 0x2000), (4, 4, 0, 0, pvh_note, len(pvh_note))]))
movl = b"".join(b"\xa1" + u32(0xC0100000 + 16 * i) for i in range(8))
seed("elf", "elf32-lguest", elf(False, 0xC0100000, [(1, 5, 0xC0100000, 0, movl, 0x1000), (1, 6, 0xC0200000, 0, b"\0" * 8, 0x1000)]))
imm = b"".join(b"\x48\xc7\xc0" + u32(0x81000000 + 8 * i) for i in range(80))
seed("elf", "elf64-vmlinux", elf(True, 0xFFFFFFFF81000000, [(1, 5, 0xFFFFFFFF81000000, 0xFFFFFFFF81000000, imm, 0x1000),
                                                              (1, 6, 0, 0x1200000, b"\0" * 16, 0x100)]))

def bzimage(version=0x020F, setup_sects=1, loadflags=1, xloadflags=1, preferred=0x1000000, init_size=0x3000, payload=b"\x1f\x8b\x08\0" + b"\0" * 60):
    setup = bytearray(512 * ((setup_sects or 4) + 1))   # 0 means 4, as the boot protocol says
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x200:0x202] = b"\xeb\x66"                    # jump past the header: header ends at 0x268
    setup[0x202:0x206] = b"HdrS"
    setup[0x206:0x208] = u16(version)
    setup[0x20E:0x210] = u16(0x300 - 0x200)             # kernel_version -> 0x300
    setup[0x211] = loadflags
    setup[0x214:0x218] = u32(0x100000)
    setup[0x22C:0x230] = u32(0x37FFFFFF)
    setup[0x230:0x234] = u32(0x200000)
    setup[0x234] = 1
    setup[0x236:0x238] = u16(xloadflags)
    setup[0x238:0x23C] = u32(2047)
    setup[0x248:0x24C] = u32(0x100)
    setup[0x24C:0x250] = u32(len(payload))
    setup[0x258:0x260] = u64(preferred)
    setup[0x260:0x264] = u32(init_size)
    setup[0x300:0x320] = b"6.1.0-fuzz (fuzz@example) #1\0"
    return bytes(setup) + b"\x90" * 0x100 + payload
seed("bzimage", "v2.15", bzimage())
seed("bzimage", "v2.06-32bit", bzimage(version=0x0206, xloadflags=0, setup_sects=0))
seed("bzimage", "too-high", bzimage(preferred=0xFFFFFFFFFFF00000))

# ---- Page offset: shape, repeats, segment specs (kind, u32 vaddr, u64 any, [u32]), code ----
def po(elf64, repeats, segs, code):
    out = u8((len(segs) - 1) << 1 | (1 if elf64 else 0)) + u8(repeats - 1)
    for kind, v, extra in segs:
        out += u8(kind) + u32(v) + u64(0) + extra
    return out + code
seed("pageoffset", "lguest32", po(False, 4, [(0x50, 0x00100000, b"")], b"\xa1\x00\x10\x10\xc0\x90"))
seed("pageoffset", "vmlinux64", po(True, 64, [(0x53, 0x01000000, b""), (0x62, 0, u32(0x1000000))], b"\x48\xc7\xc0\x00\x00\x00\x81"))
