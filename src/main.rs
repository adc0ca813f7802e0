// A training step allocates and frees tensors of tens of megabytes hundreds of times. The system
// allocator hands the big ones back to the kernel and gets fresh pages to fault in and zero
// each time; mimalloc told never to purge keeps them for reuse (keras-xxs CPU step about 15%
// faster, measured with `mvlab bench`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3; the Rust bindings do not name it). -1: never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // SAFETY: sets a mimalloc option; no other thread exists yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // mvlab chooses each run's device from its config; burn still builds its default device
    // when it reads an optimizer state (and panics on a BURN_DEVICE naming a backend this
    // binary lacks), so that default is pinned to the CPU, which every build has.
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    match mvlab::cli::main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
