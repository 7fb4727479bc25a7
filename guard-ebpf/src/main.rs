//! The rpz-guard XDP program.
//!
//! Stage 1 (workspace proof): passes every frame and counts what it sees in
//! per-CPU counters shared with userspace through `guard-common`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use guard_common::{STAT_COUNT, Stat};

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Adds `n` to counter `stat` of this CPU.
#[inline(always)]
fn bump(stat: Stat, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += n };
    }
}

/// XDP entry point.
#[xdp]
pub fn rpz_guard(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    bump(Stat::Packets, 1);
    bump(Stat::Bytes, (end - start) as u64);
    if start + ETH_HDR_LEN > end {
        bump(Stat::NonIp, 1);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let ethertype = u16::from_be(unsafe { *((start + 12) as *const u16) });
    match ethertype {
        ETH_P_IP => bump(Stat::Ipv4, 1),
        ETH_P_IPV6 => bump(Stat::Ipv6, 1),
        _ => bump(Stat::NonIp, 1),
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
