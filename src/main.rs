/// jemalloc: a fleet connecting at once leaves glibc's per-thread arenas fragmented (about
/// 1.2 KB per agent at 19,000 WebSocket agents); see BENCHMARKS.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    use std::io::Write;
    // A background thread gives back pages freed after a burst (a fleet connecting, a
    // reconnect storm) within seconds, instead of only as later allocations come: about 1 KB
    // per agent of resident memory at 19,000 WebSocket agents (BENCHMARKS.md).
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::max_background_threads::write(1)
        .and_then(|()| tikv_jemalloc_ctl::background_thread::write(true))
    {
        eprintln!("warning: jemalloc background thread not started: {e}");
    }
    match corral::cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A closed stderr leaves nothing to tell: no panic over it.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
