//! Lays out the jwtgate binary's code: the functions listed in `link/jwtgate.order` (those
//! that run at start-up and on the request path, tools/order-file.sh) go first and together.
//!
//! The kernel maps a binary's code in 64 KiB windows around each page a process touches;
//! without an order the ~2.8 MiB of code that runs is spread over nearly all of the ~12 MiB,
//! and an idle gateway keeps ~8 MiB of code pages resident (docs/BENCHMARKS.md, "s11-C").
//! Only lld (rustc's default linker on x86_64-unknown-linux-gnu since Rust 1.90) and mold take
//! `--symbol-ordering-file`; elsewhere, or with `JWTGATE_NO_ORDER_FILE` set, the binary is
//! linked as before. Names the binary no longer has are skipped without a warning.
use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link/jwtgate.order");
    println!("cargo:rerun-if-env-changed=JWTGATE_NO_ORDER_FILE");
    if env::var_os("JWTGATE_NO_ORDER_FILE").is_some() || !linker_takes_an_order() {
        return;
    }
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("link/jwtgate.order");
    // A source tree without the list (a trimmed build context) links as before: lld would
    // stop on a missing file.
    if !order.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=jwtgate=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=jwtgate=-Wl,--no-warn-symbol-ordering");
}

/// rustc links x86_64-unknown-linux-gnu with its own lld from 1.90 on, unless the build
/// names another linker.
fn linker_takes_an_order() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("fuse-ld=mold") {
        return true;
    }
    if flags.contains("linker")
        || flags.contains("fuse-ld")
        || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
    {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (...)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
