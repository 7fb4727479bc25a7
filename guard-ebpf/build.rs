//! Link options of the XDP program, and a rebuild when bpf-linker changes
//! (it is the linker of the eBPF object).
fn main() {
    // No tail merging: LLVM would join the IPv4 and IPv6 map lookups into
    // one call site that sees two maps, and the verifier only inlines a
    // lookup whose call site has a single map; the others go through the
    // generic helper, an indirect call (about 20 ns per allowed packet).
    // Tested by `xdp_verdicts::every_map_lookup_is_inlined`.
    println!("cargo:rustc-link-arg-bins=--llvm-args=-enable-tail-merge=false");
    // Header fields sit at 2-aligned offsets (after the 14-byte Ethernet
    // header): read them with one load each, not byte by byte. The kernel
    // allows unaligned packet and map-value access on every architecture
    // with efficient unaligned access (x86-64, arm64); stack accesses must
    // stay aligned, which the verifier checks at load (about 5 ns less per
    // allowed packet on the bench machine).
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
