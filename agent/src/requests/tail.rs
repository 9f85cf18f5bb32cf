//! Follows one access log by offset: new complete lines since the last poll, across
//! rotation by rename (logrotate's `create`) and truncation, without reading a line twice.
//!
//! - Rename: the writers keep appending to the renamed file until Gunicorn reopens (USR1
//!   at once; HUP lets old ASGI workers finish first, up to the graceful timeout), so the
//!   old file is kept open and read ("draining") until it has been quiet for a while or
//!   is deleted (compressed by a later rotation), while the new file at the path is read
//!   from its start.
//! - Truncation (the file got shorter than the offset): read again from the start. The
//!   lines written between the last read and the truncation are lost; lines are never
//!   counted twice.
//! - A partial last line waits for its newline; a line longer than [`MAX_LINE`] is
//!   reported once as junk and skipped, so memory stays bounded whatever is written.
//!
//! Reads are `pread`s of the open file: nothing here can block or slow the writer.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::parse::MAX_LINE;

/// Polls a renamed file stays open after its last new byte.
const DRAIN_POLLS: u32 = 60;
/// Renamed files followed at once; an older one is dropped when another rotation comes.
const MAX_DRAINING: usize = 2;
const CHUNK: usize = 64 * 1024;
/// Bytes read per file and poll: a huge backlog is worked off over several polls.
const MAX_PER_POLL: u64 = 32 << 20;

/// A complete line, or `None` for one that was too long to keep.
pub type Sink<'s> = dyn FnMut(Option<&[u8]>) + 's;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

struct Reader {
    file: File,
    id: FileId,
    offset: u64,
    partial: Vec<u8>,
    /// The line being read is already past `MAX_LINE`: skip to its newline.
    overlong: bool,
    idle: u32,
}

impl Reader {
    fn open(path: &Path, at_end: bool) -> io::Result<Reader> {
        let file = File::open(path)?;
        let m = file.metadata()?;
        Ok(Reader {
            id: FileId::of(&m),
            offset: if at_end { m.len() } else { 0 },
            file,
            partial: Vec::new(),
            overlong: false,
            idle: 0,
        })
    }

    /// Whether the file has no name left (or cannot be looked at).
    fn deleted(&self) -> bool {
        self.file.metadata().map_or(true, |m| m.nlink() == 0)
    }

    /// Reads what was appended since the last call; returns the number of bytes.
    fn read_new(&mut self, buf: &mut [u8], sink: &mut Sink<'_>) -> io::Result<u64> {
        let len = self.file.metadata()?.len();
        if len < self.offset {
            // Truncated: whatever was half read is gone with it.
            self.offset = 0;
            self.partial.clear();
            self.overlong = false;
        }
        let mut read = 0;
        while read < MAX_PER_POLL {
            let n = self.file.read_at(buf, self.offset)?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            read += n as u64;
            self.feed(&buf[..n], sink);
        }
        self.idle = if read == 0 { self.idle + 1 } else { 0 };
        Ok(read)
    }

    fn feed(&mut self, mut chunk: &[u8], sink: &mut Sink<'_>) {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            let line = &chunk[..i];
            chunk = &chunk[i + 1..];
            if self.overlong {
                self.overlong = false;
                sink(None);
            } else if self.partial.is_empty() {
                sink((line.len() <= MAX_LINE).then_some(line));
            } else {
                self.partial.extend_from_slice(line);
                sink((self.partial.len() <= MAX_LINE).then_some(&self.partial[..]));
                self.partial.clear();
            }
        }
        if self.overlong {
            return;
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            self.partial.clear();
            self.overlong = true;
        } else {
            self.partial.extend_from_slice(chunk);
        }
    }
}

pub struct Tail {
    path: PathBuf,
    current: Option<Reader>,
    draining: Vec<Reader>,
    /// Until the first open: lines written before the agent started are not counted.
    skip_existing: bool,
    buf: Vec<u8>,
}

impl Tail {
    /// `skip_existing`: start at the end of a file that is already there (agent start),
    /// rather than at its beginning (a file that appears later is read from its start).
    pub fn new(path: PathBuf, skip_existing: bool) -> Tail {
        Tail {
            path,
            current: None,
            draining: Vec::new(),
            skip_existing,
            buf: vec![0; CHUNK],
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands every new complete line to `sink`; returns the bytes read. A missing file is
    /// not an error (the app has not written yet, or logrotate is between rename and
    /// create).
    pub fn poll(&mut self, sink: &mut Sink<'_>) -> io::Result<u64> {
        let mut read = 0;
        for r in &mut self.draining {
            read += r.read_new(&mut self.buf, sink)?;
        }
        // A renamed file that logrotate has since removed (compressed) is let go at once,
        // once read to its end: the agent must not keep deleted logs, and their disk space,
        // alive (the app's own holders are restarted for that: logrotate.rs).
        self.draining
            .retain(|r| r.idle < DRAIN_POLLS && !r.deleted());
        if let Some(r) = &mut self.current {
            read += r.read_new(&mut self.buf, sink)?;
        }
        let at_path = match std::fs::metadata(&self.path) {
            Ok(m) => Some(FileId::of(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let skip = std::mem::take(&mut self.skip_existing);
        match (at_path, &self.current) {
            (None, _) => {}
            (Some(id), Some(r)) if r.id == id => {}
            (Some(_), _) => {
                let mut next = match Reader::open(&self.path, skip && self.current.is_none()) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(read),
                    Err(e) => return Err(e),
                };
                read += next.read_new(&mut self.buf, sink)?;
                if let Some(mut old) = self.current.replace(next) {
                    old.idle = 0;
                    self.draining.push(old);
                    if self.draining.len() > MAX_DRAINING {
                        self.draining.remove(0);
                    }
                }
            }
        }
        Ok(read)
    }

    /// Empties the file at the path once it holds more than `limit` bytes and every one
    /// of them was read, so a log nobody rotates stays bounded. Only for files fleet alone
    /// reads (journal mode). Returns whether it truncated.
    pub fn truncate_over(&mut self, limit: u64, sink: &mut Sink<'_>) -> io::Result<bool> {
        let Some(r) = &mut self.current else {
            return Ok(false);
        };
        if r.offset <= limit {
            return Ok(false);
        }
        let file = match std::fs::OpenOptions::new().write(true).open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if FileId::of(&file.metadata()?) != r.id {
            return Ok(false);
        }
        // Read up to the last byte right before cutting: only lines written in between
        // are lost.
        r.read_new(&mut self.buf, sink)?;
        file.set_len(0)?;
        r.offset = 0;
        r.partial.clear();
        r.overlong = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn lines(t: &mut Tail) -> Vec<String> {
        let mut out = Vec::new();
        t.poll(&mut |l| {
            out.push(l.map_or("<long>".into(), |l| String::from_utf8_lossy(l).into_owned()))
        })
        .unwrap();
        out
    }

    #[test]
    fn appended_lines_are_read_once_and_a_partial_line_waits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let mut t = Tail::new(p.clone(), false);
        assert!(lines(&mut t).is_empty(), "no file yet");
        append(&p, "a\nb\nc");
        assert_eq!(lines(&mut t), ["a", "b"]);
        assert!(lines(&mut t).is_empty());
        append(&p, "c\n\nd\n");
        assert_eq!(lines(&mut t), ["cc", "", "d"]);
        assert!(lines(&mut t).is_empty());
    }

    #[test]
    fn lines_from_before_the_agent_started_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        append(&p, "old\n");
        let mut t = Tail::new(p.clone(), true);
        assert!(lines(&mut t).is_empty());
        append(&p, "new\n");
        assert_eq!(lines(&mut t), ["new"]);
        // A file that appears later is read from its start.
        let q = dir.path().join("later.log");
        let mut t = Tail::new(q.clone(), true);
        assert!(lines(&mut t).is_empty());
        append(&q, "first\n");
        assert_eq!(lines(&mut t), ["first"]);
    }

    #[test]
    fn rotation_by_rename_loses_nothing_and_reads_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let old = dir.path().join("access.log.1");
        let mut t = Tail::new(p.clone(), false);
        append(&p, "1\n2\n");
        assert_eq!(lines(&mut t), ["1", "2"]);
        append(&p, "3\n4");
        std::fs::rename(&p, &old).unwrap();
        // Between rename and create: the old file is still followed.
        append(&old, "\n");
        assert_eq!(lines(&mut t), ["3", "4"]);
        std::fs::File::create(&p).unwrap();
        // The writer has not reopened yet: it still appends to the renamed file.
        append(&old, "5\n");
        append(&p, "6\n");
        let mut got = lines(&mut t);
        got.sort();
        assert_eq!(got, ["5", "6"]);
        append(&old, "7\n");
        append(&p, "8\n");
        let mut got = lines(&mut t);
        got.sort();
        assert_eq!(got, ["7", "8"]);
        // A quiet renamed file is eventually let go.
        for _ in 0..DRAIN_POLLS {
            lines(&mut t);
        }
        assert!(t.draining.is_empty());
        append(&p, "9\n");
        assert_eq!(lines(&mut t), ["9"]);

        // A renamed file that is then removed (compressed) is read to its end and let go
        // at once: no deleted file held open.
        std::fs::rename(&p, &old).unwrap();
        append(&old, "10\n");
        std::fs::File::create(&p).unwrap();
        assert_eq!(lines(&mut t), ["10"]);
        assert_eq!(t.draining.len(), 1);
        append(&old, "11\n");
        std::fs::remove_file(&old).unwrap();
        assert_eq!(lines(&mut t), ["11"]);
        assert!(t.draining.is_empty());
    }

    #[test]
    fn truncation_starts_over_without_double_counting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let mut t = Tail::new(p.clone(), false);
        append(&p, "one\ntwo\npart");
        assert_eq!(lines(&mut t), ["one", "two"]);
        // copytruncate-style: emptied in place, then written again.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&p, "x\n");
        assert_eq!(
            lines(&mut t),
            ["x"],
            "the half line went with the truncation"
        );

        // fleet's own bound: truncates only past the limit, after reading everything.
        append(&p, "y\nz\n");
        let mut seen = Vec::new();
        assert!(!t
            .truncate_over(1 << 20, &mut |l| seen.push(l.map(<[u8]>::to_vec)))
            .unwrap());
        assert!(t
            .truncate_over(1, &mut |l| seen.push(l.map(<[u8]>::to_vec)))
            .unwrap());
        assert_eq!(seen, [Some(b"y".to_vec()), Some(b"z".to_vec())]);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert!(lines(&mut t).is_empty());
        append(&p, "after\n");
        assert_eq!(lines(&mut t), ["after"]);
    }

    #[test]
    fn a_big_file_found_at_agent_start_is_emptied_without_counting_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        append(&p, &"old line\n".repeat(100));
        let mut t = Tail::new(p.clone(), true);
        assert!(lines(&mut t).is_empty());
        let mut seen = 0;
        assert!(t.truncate_over(10, &mut |_| seen += 1).unwrap());
        assert_eq!((seen, std::fs::metadata(&p).unwrap().len()), (0, 0));
        append(&p, "new\n");
        assert_eq!(lines(&mut t), ["new"]);
    }

    #[test]
    fn overlong_lines_are_reported_once_and_memory_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let mut t = Tail::new(p.clone(), false);
        let huge = "x".repeat(MAX_LINE * 3);
        append(&p, &format!("ok\n{huge}\nok2\n"));
        assert_eq!(lines(&mut t), ["ok", "<long>", "ok2"]);
        // Written over several polls, never finished yet: nothing buffered past the bound.
        append(&p, &huge);
        assert!(lines(&mut t).is_empty());
        assert!(t.current.as_ref().unwrap().partial.len() <= MAX_LINE);
        append(&p, &huge);
        append(&p, "\nok3\n");
        assert_eq!(lines(&mut t), ["<long>", "ok3"]);
        // Exactly at the bound is still a line.
        let edge = "y".repeat(MAX_LINE);
        append(&p, &edge[..10]);
        lines(&mut t);
        append(&p, &format!("{}\n", &edge[10..]));
        assert_eq!(lines(&mut t), [edge]);
    }
}
