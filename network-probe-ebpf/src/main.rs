//! The eBPF object of network-probe. One module per hook; each program only observes: every
//! path returns "continue with the next program" and never drops, delays or modifies a packet.
#![no_std]
#![no_main]

mod device;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
