//! The server process as Linux's /proc shows it: resident memory, CPU time, and which process
//! listens on a port.
//!
//! Reading /proc needs no cooperation from the server, so CallHome and Nchan are measured the
//! same way. The parsers take the file's text and are tested on samples.

use std::fs;
use std::io;
use std::process::Command;

/// Clock ticks per second assumed when `getconf CLK_TCK` cannot be run (Linux's `USER_HZ`).
const DEFAULT_CLOCK_TICKS: u64 = 100;

/// The server's resident set size (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| bad_data(pid, "status", "no VmRSS line"))
}

/// The server's CPU time so far, user plus system, in clock ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| bad_data(pid, "stat", "no utime/stime fields"))
}

/// Whether process `pid` still runs: it exists and is not a zombie waiting to be reaped.
pub fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_state(&stat))
        .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
}

/// Clock ticks per second for [`cpu_ticks`], from `getconf CLK_TCK`, and whether it was read
/// (`false`: the default of 100 was assumed).
pub fn clock_ticks() -> (u64, bool) {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .map_or((DEFAULT_CLOCK_TICKS, false), |ticks| (ticks, true))
}

/// The process (other than this one) that serves a listening TCP socket on `port`.
///
/// When a parent and its child both hold the socket (nginx's master and its worker), the
/// child is the one serving connections, so it is chosen. Several unrelated holders (several
/// nginx workers) are an error: the caller must say which with `--server-pid`.
pub fn listener_pid(port: u16) -> io::Result<Option<u32>> {
    let holders = listener_pids(port)?;
    let parents: Vec<u32> = holders
        .iter()
        .filter_map(|&pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| parse_parent_pid(&stat))
        .collect();
    let servers: Vec<u32> = holders
        .iter()
        .copied()
        .filter(|pid| !parents.contains(pid))
        .collect();
    match servers.as_slice() {
        [] => Ok(None),
        [pid] => Ok(Some(*pid)),
        several => Err(io::Error::other(format!(
            "processes {several:?} all listen on port {port}: pass --server-pid"
        ))),
    }
}

/// Every process (other than this one) holding a listening TCP socket on `port`.
fn listener_pids(port: u16) -> io::Result<Vec<u32>> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(parse_listen_inodes(&text, port));
        }
    }
    let mut holders = Vec::new();
    if inodes.is_empty() {
        return Ok(holders);
    }
    let me = std::process::id();
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes come and go, and some fd tables are not ours to read: skip those.
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok());
            if inode.is_some_and(|inode| inodes.contains(&inode)) {
                holders.push(pid);
                break;
            }
        }
    }
    Ok(holders)
}

fn bad_data(pid: u32, file: &str, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/{pid}/{file}: {why}"),
    )
}

/// `VmRSS:   12345 kB` from /proc/PID/status, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kib * 1024)
}

/// utime + stime from /proc/PID/stat (fields 14 and 15). The command name in field 2 may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // field 3 (state) is index 0
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The state letter (field 3: `R`, `S`, `Z`, ...) from /proc/PID/stat.
pub fn parse_state(stat: &str) -> Option<char> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().next()?.chars().next()
}

/// The parent pid (field 4) from /proc/PID/stat.
pub fn parse_parent_pid(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Inodes of listening sockets (state `0A`) on `port` in a /proc/net/tcp{,6} table.
pub fn parse_listen_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            let listening = *fields.get(3)? == "0A";
            (listening && local_port == port)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tcallhome\nVmPeak:\t  999 kB\nVmRSS:\t    8192 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(status), Some(8 * 1024 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn cpu_ticks_skip_a_tricky_command_name() {
        let stat = "4242 (call home) (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    150 27 0 0 20 0 3 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(177));
        assert_eq!(parse_parent_pid(stat), Some(1));
        assert_eq!(parse_state(stat), Some('S'));
        assert_eq!(parse_state("77 (x) Z 1 77"), Some('Z'));
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:46A0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:46A0 0500007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listen_inodes(table, 18080), vec![31337]);
        assert_eq!(parse_listen_inodes(table, 8080), vec![4242]);
        assert!(parse_listen_inodes(table, 9).is_empty());
    }

    #[test]
    fn this_process_can_be_read() {
        let me = std::process::id();
        assert!(rss_bytes(me).expect("own status") > 0);
        cpu_ticks(me).expect("own stat");
        assert!(running(me));
        assert!(!running(u32::MAX), "no such process");
        assert!(clock_ticks().0 > 0);
    }
}
