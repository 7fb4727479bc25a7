//! Stub library so `guard-user` can name this crate as a build dependency;
//! the program itself is the `guard-ebpf` binary built for `bpfel-unknown-none`.
#![no_std]
