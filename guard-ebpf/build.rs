//! Link options of the XDP program, and a rebuild when bpf-linker changes
//! (it is the linker of the eBPF object).
fn main() {
    // No tail merging: LLVM would join the IPv4 and IPv6 map lookups into
    // one call site that sees two maps, and the verifier only inlines a
    // lookup whose call site has a single map; the others go through the
    // generic helper, an indirect call (about 20 ns per allowed packet).
    // Tested by `xdp_verdicts::every_map_lookup_is_inlined`.
    println!("cargo:rustc-link-arg-bins=--llvm-args=-enable-tail-merge=false");
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
