//! Server-sent events: turns a stream's decoded bytes into events.
//!
//! Follows the `EventSource` parsing rules that matter here (fields, comments, a blank line
//! dispatching, one leading space stripped) and keeps only the current line and event, so an
//! idle stream costs a few bytes.

/// Longest line accepted; a longer one means the stream is not what this tool expects.
const MAX_LINE: usize = 64 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `None` for the default type, "message".
    pub name: Option<String>,
    pub data: String,
    /// The `id:` field, if the event had one.
    pub id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("event stream line longer than {MAX_LINE} bytes")]
pub struct LineTooLong;

/// The event being read and the unfinished line.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    event: Event,
    has_data: bool,
}

impl Parser {
    /// Feeds decoded stream bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, LineTooLong> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                if self.line.len() >= MAX_LINE {
                    return Err(LineTooLong);
                }
                self.line.push(byte);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            if line.is_empty() {
                if self.has_data {
                    let mut event = std::mem::take(&mut self.event);
                    if event.data.ends_with('\n') {
                        event.data.pop();
                    }
                    events.push(event);
                } else {
                    self.event = Event::default();
                }
                self.has_data = false;
            } else {
                self.field(&line);
            }
            self.line = line;
            self.line.clear();
        }
        Ok(events)
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return; // a comment (keep-alive)
        }
        let line = String::from_utf8_lossy(line);
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "data" => {
                self.event.data.push_str(value);
                self.event.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event.name = Some(value.to_owned()),
            "id" => self.event.id = Some(value.to_owned()),
            _ => {} // retry, and fields no one defined
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callhome_stream_yields_ready_then_values() {
        let mut parser = Parser::default();
        let stream = b"event: ready\ndata: {}\n\n:keep-alive\n\nid: 1\r\ndata: {\"seq\":1,\"info\":\"a\"}\r\n\r\n";
        let events = parser.feed(stream).expect("ok");
        assert_eq!(
            events,
            vec![
                Event {
                    name: Some("ready".into()),
                    data: "{}".into(),
                    id: None
                },
                Event {
                    name: None,
                    data: r#"{"seq":1,"info":"a"}"#.into(),
                    id: Some("1".into())
                },
            ]
        );
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = b"id: 7\ndata: line one\ndata:line two\n\n";
        for cut in 0..stream.len() {
            let mut parser = Parser::default();
            let mut events = parser.feed(&stream[..cut]).expect("ok");
            events.extend(parser.feed(&stream[cut..]).expect("ok"));
            assert_eq!(events.len(), 1, "cut {cut}");
            assert_eq!(events[0].data, "line one\nline two");
            assert_eq!(events[0].id.as_deref(), Some("7"));
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut parser = Parser::default();
        assert!(
            parser
                .feed(b"event: nothing\n\n: hi\n\n")
                .expect("ok")
                .is_empty()
        );
        let events = parser.feed(b"data: x\n\n").expect("ok");
        assert_eq!(events[0].name, None, "the earlier event's name was reset");
    }
}
