//! The lean path's head parser against hyper on generated requests: a bounded `proptest` of
//! the differential in `differential.rs` (the cargo fuzz target `framing`, run by
//! `scripts/fuzz.sh`, is the unbounded one).
//!
//! Requests come from a small grammar of request lines, header lines and bodies, with the
//! mutations that matter for framing: duplicated and mixed `Content-Length` and
//! `Transfer-Encoding`, odd values and whitespace, bare CR and LF line ends, obs-fold, several
//! requests pipelined, and the input cut short or with a stray byte.

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use crate::differential::{self, Stricter};

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("GET".to_owned()),
        4 => Just("POST".to_owned()),
        1 => Just("HEAD".to_owned()),
        1 => Just("DELETE".to_owned()),
        1 => Just("CONNECT".to_owned()),
        1 => Just("OPTIONS".to_owned()),
        1 => Just("get".to_owned()),
        1 => "[A-Z]{1,8}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("/".to_owned()),
        4 => Just("/v1/poll?id=abcdefghijklmnop&since=0".to_owned()),
        2 => Just("/v1/ids/abcdefghijklmnop/notify".to_owned()),
        1 => Just("*".to_owned()),
        1 => Just("http://x/healthz".to_owned()),
        1 => Just("x:443".to_owned()),
        1 => Just("//x".to_owned()),
        2 => "/[a-z0-9?=&%/]{0,12}",
    ]
}

fn version() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => Just("HTTP/1.1".to_owned()),
        3 => Just("HTTP/1.0".to_owned()),
        1 => Just("HTTP/2.0".to_owned()),
        1 => Just("HTTP/1.2".to_owned()),
        1 => Just("http/1.1".to_owned()),
    ]
}

fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![12 => Just("\r\n"), 2 => Just("\n"), 1 => Just("\r")]
}

/// A header line: a name and a value that matter for framing, with some spacing.
fn header() -> impl Strategy<Value = Vec<u8>> {
    let length = prop_oneof![
        Just("0"),
        Just("5"),
        Just("12"),
        Just("+5"),
        Just(" 5"),
        Just("5 "),
        Just("0x5"),
        Just("5,5"),
        Just(""),
        Just("99999999999999999999"),
        Just("18446744073709551615"),
        Just("18446744073709551613"),
        Just("05"),
    ]
    .prop_map(|v| ("Content-Length", v));
    let coding = prop_oneof![
        Just("chunked"),
        Just("Chunked"),
        Just(" chunked"),
        Just("gzip, chunked"),
        Just("chunked, gzip"),
        Just("identity"),
        Just("chunked,"),
        Just(", chunked"),
    ]
    .prop_map(|v| ("Transfer-Encoding", v));
    let connection = prop_oneof![
        Just("close"),
        Just("keep-alive"),
        Just("Keep-Alive, close"),
        Just("upgrade"),
        Just("foo"),
    ]
    .prop_map(|v| ("Connection", v));
    let other = prop_oneof![
        Just(("Host", "x")),
        Just(("Host", "")),
        Just(("Expect", "100-continue")),
        Just(("Expect", "100-Continue")),
        Just(("Expect", "foo")),
        Just(("Upgrade", "websocket")),
        Just(("X-A", "a\tb")),
        Just(("X-A", "\u{e9}")),
        Just(("content-length", "5")),
        Just(("transfer-encoding", "chunked")),
    ];
    let name_form = prop_oneof![
        12 => Just(""),
        1 => Just(" "),
        1 => Just("\t"),
    ];
    let spacing = prop_oneof![8 => Just(" "), 2 => Just(""), 1 => Just("  "), 1 => Just("\t")];
    (
        prop_oneof![4 => Just(("Host", "x")), 3 => length, 3 => coding, 2 => connection, 3 => other],
        name_form,
        spacing,
    )
        .prop_map(|((name, value), after_name, spacing)| {
            format!("{name}{after_name}:{spacing}{value}").into_bytes()
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(Vec::new()),
        3 => Just(b"hello".to_vec()),
        3 => Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
        1 => Just(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_vec()),
        1 => Just(b"5;ext=1\r\nhello\r\n0\r\n\r\n".to_vec()),
        1 => Just(b"0\r\nX-Trailer: 1\r\n\r\n".to_vec()),
        2 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

/// One request: line, headers (some folded onto the previous line), blank line, body.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        method(),
        target(),
        version(),
        line_end(),
        proptest::collection::vec((header(), prop::bool::weighted(0.05)), 0..6),
        line_end(),
        body(),
    )
        .prop_map(|(method, target, version, eol, headers, last_eol, body)| {
            let mut out = format!("{method} {target} {version}{eol}").into_bytes();
            for (line, folded) in headers {
                if folded {
                    out.extend_from_slice(b" folded");
                    out.extend_from_slice(eol.as_bytes());
                }
                out.extend_from_slice(&line);
                out.extend_from_slice(eol.as_bytes());
            }
            out.extend_from_slice(last_eol.as_bytes());
            out.extend_from_slice(&body);
            out
        })
}

/// One to three requests pipelined, then maybe cut short or given a stray byte.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let mutation = prop_oneof![
        6 => Just(None),
        1 => (any::<prop::sample::Index>(), Just(None)).prop_map(Some),
        1 => (any::<prop::sample::Index>(), any::<u8>().prop_map(Some)).prop_map(Some),
    ];
    (proptest::collection::vec(request(), 1..4), mutation).prop_map(|(requests, mutation)| {
        let mut bytes = requests.concat();
        match mutation {
            Some((at, None)) if !bytes.is_empty() => bytes.truncate(at.index(bytes.len())),
            Some((at, Some(byte))) => bytes.insert(at.index(bytes.len() + 1), byte),
            _ => {}
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_lean_parser_frames_requests_as_hyper_does(input in input()) {
        if let Err(difference) = differential::compare(&input) {
            return Err(TestCaseError::fail(format!("{difference:?}")));
        }
    }
}

/// The differential itself catches what it should: the old lean parser's mistakes, replayed
/// as readings, are differences; the refusals the lean path may add are recognised.
#[test]
fn the_differential_tells_stricter_from_different() {
    let judged = |raw: &str| differential::stricter(raw.as_bytes());
    assert_eq!(
        judged("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
        Some(Stricter::DuplicateLength)
    );
    assert_eq!(
        judged(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"
        ),
        Some(Stricter::LengthAndCoding)
    );
    assert_eq!(
        judged("GET / HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n"),
        Some(Stricter::UnknownExpectation)
    );
    assert_eq!(judged("GET / HTTP/1.1\r\n\r\n"), Some(Stricter::Host));
    assert_eq!(
        judged("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        Some(Stricter::Coding)
    );
    assert_eq!(
        judged("GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some(Stricter::TargetForm)
    );
    assert_eq!(
        judged("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n"),
        None
    );
    // Readings the old lean parser gave are differences.
    let cl0 = b"GET /v1/poll HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let old = differential::Reading {
        requests: vec![framed("GET", "/v1/poll", 0)],
        end: differential::End::Refused("malformed request head".into()),
    };
    assert!(differential::judge(cl0, &old, &differential::hyper(cl0).0).is_err());
    let plus = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello";
    let old = differential::Reading {
        requests: vec![framed("POST", "/", 5)],
        end: differential::End::Waiting,
    };
    assert!(differential::judge(plus, &old, &differential::hyper(plus).0).is_err());
    let close = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n";
    let old = differential::Reading {
        requests: vec![framed("GET", "/", 0)],
        end: differential::End::Waiting,
    };
    assert!(differential::judge(close, &old, &differential::hyper(close).0).is_err());
    // Every table vector that both readers frame is framed alike.
    for raw in [
        "GET /v1/poll?id=a&since=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /healthz HTTP/1.1\nHost: x\n\n",
        // Found by the fuzzer: a partial head already malformed is refused by the lean path
        // at once and by hyper once it looks complete.
        "GET / HTTP/1.1\nHost: x\n\nGET / HTTP/1.1\r\nHost: x\r\nX-Pad: a\x01a",
    ] {
        differential::compare(raw.as_bytes()).unwrap();
    }
}

fn framed(method: &str, target: &str, body: u64) -> differential::Framed {
    differential::Framed {
        method: method.into(),
        target: target.into(),
        version: hyper::Version::HTTP_11,
        body: differential::Body::Complete(body),
    }
}

/// Every input of the fuzz target's committed corpus (the framing table's vectors and what
/// the fuzzer found) frames alike, in every normal test run.
#[test]
fn the_fuzz_corpus_frames_alike() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/framing");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        if let Err(difference) = differential::compare(&input) {
            panic!("{}: {difference:?}", path.display());
        }
        inputs += 1;
    }
    assert!(inputs >= 40, "the corpus in {} is missing", dir.display());
}
