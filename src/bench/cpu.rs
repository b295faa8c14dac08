//! CPU time of threads: the calling thread (getrusage) and other threads of
//! this process by name (/proc/self/task), for the device's poll threads
//! whose code the benchmarks do not own.

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ThreadCpu {
    pub thread: String,
    pub user_s: f64,
    pub sys_s: f64,
}

impl ThreadCpu {
    pub fn total_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

/// CPU time the calling thread has used so far.
pub fn current_thread(name: &str) -> ThreadCpu {
    // SAFETY: an all-zero rusage is a valid value (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live rusage the call fills in; RUSAGE_THREAD only
    // reads the calling thread's accounting.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return ThreadCpu { thread: name.to_string(), ..Default::default() };
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ThreadCpu { thread: name.to_string(), user_s: tv(ru.ru_utime), sys_s: tv(ru.ru_stime) }
}

/// CPU time of every thread of this process whose name starts with one of
/// `prefixes`, sorted by name. Threads that end while being read are skipped.
pub fn threads_named(prefixes: &[&str]) -> Vec<ThreadCpu> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tick = if tick > 0 { tick as f64 } else { 100.0 };
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for e in dir.flatten() {
        let p = e.path();
        let Ok(comm) = std::fs::read_to_string(p.join("comm")) else { continue };
        let comm = comm.trim_end().to_string();
        if !prefixes.iter().any(|x| comm.starts_with(x)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(p.join("stat")) else { continue };
        if let Some((user, sys)) = parse_stat_times(&stat) {
            out.push(ThreadCpu { thread: comm, user_s: user as f64 / tick, sys_s: sys as f64 / tick });
        }
    }
    out.sort_by(|a, b| a.thread.cmp(&b.thread));
    out
}

/// utime and stime (clock ticks) from a `/proc/.../stat` line. The name
/// field may hold spaces and parentheses, so fields are counted from the
/// last ')'.
fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime = f.nth(11)?.parse().ok()?;
    let stime = f.next()?.parse().ok()?;
    Some((utime, stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_the_name() {
        let s = "1234 (vduse-poll 0)) R 1 2 3 4 5 6 7 8 9 10 42 17 0 0 20 0";
        assert_eq!(parse_stat_times(s), Some((42, 17)));
        assert_eq!(parse_stat_times("garbage"), None);
    }

    #[test]
    fn own_thread_is_found_by_name() {
        let h = std::thread::Builder::new()
            .name("cputest-xyz".into())
            .spawn(|| {
                let t0 = std::time::Instant::now();
                let mut x = 0u64;
                while t0.elapsed() < std::time::Duration::from_millis(30) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                let me = current_thread("cputest-xyz");
                let listed = threads_named(&["cputest-"]);
                (me, listed)
            })
            .unwrap();
        let (me, listed) = h.join().unwrap();
        assert!(me.total_s() > 0.0, "{me:?}");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].thread, "cputest-xyz");
    }
}
