//! Names of the ids a run uses and the info strings published to them.
//!
//! Ids carry a random per-run tag so reruns against the same server never collide. Each info
//! names its id and round, so a receiver can tell its own value from anyone else's.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::clock;

/// Bytes an info is padded to, with `.`.
const INFO_LEN: usize = 16;

/// A random 6-character tag (`[a-z0-9]`) for one run.
pub fn run_tag() -> String {
    // `RandomState` is seeded from the OS per process; the clock and pid make each call differ.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(clock::now_ns());
    hasher.write_u32(std::process::id());
    let mut bits = hasher.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| {
            let c = alphabet[usize::try_from(bits % 36).unwrap_or(0)];
            bits /= 36;
            char::from(c)
        })
        .collect()
}

/// The name of id `i` in run `run`: `b{run}-{i:08}`, 16 characters for a 6-character tag,
/// the shortest id CallHome accepts.
pub fn id_name(run: &str, i: usize) -> String {
    format!("b{run}-{i:08}")
}

/// The info published to id `i` in round `round`: `"{i}:{round}"` padded with `.`.
pub fn info(i: usize, round: u32) -> String {
    format!("{:.<INFO_LEN$}", format!("{i}:{round}"))
}

/// The id index and round an info names, if it is exactly one of ours.
pub fn parse_info(info: &str) -> Option<(usize, u32)> {
    let (i, round) = info.trim_end_matches('.').split_once(':')?;
    let parsed = (i.parse().ok()?, round.parse().ok()?);
    (self::info(parsed.0, parsed.1) == info).then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_enough_for_callhome() {
        let tag = run_tag();
        assert_eq!(tag.len(), 6);
        assert!(
            tag.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(id_name("abc123", 42), "babc123-00000042");
    }

    #[test]
    fn infos_round_trip_and_foreign_ones_do_not_parse() {
        assert_eq!(info(7, 1), "7:1.............");
        assert_eq!(parse_info(&info(12_345, 3)), Some((12_345, 3)));
        assert_eq!(parse_info("7:1"), None);
        assert_eq!(parse_info("x:1............."), None);
        assert_eq!(parse_info("{\"seq\":1}"), None);
    }
}
