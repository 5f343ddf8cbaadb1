//! `check --pprof FILE.pb.gz`: the contention profile as a gzipped pprof
//! profile (`profile.proto` of github.com/google/pprof), which `go tool
//! pprof`, speedscope and Pyroscope open: one sample per holder stack, valued
//! in nanoseconds of GIL wait behind it (sample type `gil_wait`).
//!
//! No well-kept crate encodes pprof alone (the ones that do are profilers
//! that sample the calling process), so the few messages used are written
//! here for prost, which the OTLP exporter already builds with; field numbers
//! are those of profile.proto.

use std::collections::HashMap;
use std::io::Write as _;

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use crate::core::profile::ContentionProfile;
use crate::core::stacks::Frame;

/// `perftools.profiles.Profile`, the fields gilscope writes.
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Index 0 must be "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
}

/// `ValueType`: indexes into the string table.
#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `Sample`: its locations leaf first, one value per sample type.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
}

/// `Location`: here one line of one function (a frame at its line).
#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

/// `Line`.
#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

/// `Function`: name and file as string-table indexes.
#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Builds a [`Profile`] with each string, function and location stored once.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(String, String), u64>,
    locations: HashMap<Frame, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(i) = self.strings.get(s) {
            return *i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let key = (f.function.clone(), f.file.clone());
        if let Some(id) = self.functions.get(&key) {
            return *id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name = self.string(&f.function);
        let filename = self.string(&f.file);
        self.profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename,
        });
        self.functions.insert(key, id);
        id
    }

    fn location(&mut self, f: &Frame) -> u64 {
        if let Some(id) = self.locations.get(f) {
            return *id;
        }
        let function_id = self.function(f);
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            line: vec![Line {
                function_id,
                line: f.line.map_or(0, i64::from),
            }],
        });
        self.locations.insert(f.clone(), id);
        id
    }
}

/// The pprof profile of `profile`, measured over `duration_s` ending at
/// `end_unix_ns`: one sample per stack, its value the wait behind it in ns.
pub fn profile(profile: &ContentionProfile, duration_s: f64, end_unix_ns: i64) -> Profile {
    let mut b = Builder::default();
    b.string("");
    let sample_type = ValueType {
        r#type: b.string("gil_wait"),
        unit: b.string("nanoseconds"),
    };
    b.profile.sample_type = vec![sample_type];
    for s in &profile.stacks {
        let location_id = s.frames.iter().rev().map(|f| b.location(f)).collect();
        let value = vec![i64::try_from(s.wait_ns).unwrap_or(i64::MAX)];
        b.profile.sample.push(Sample { location_id, value });
    }
    let duration_nanos = (duration_s * 1e9) as i64;
    b.profile.duration_nanos = duration_nanos;
    b.profile.time_nanos = end_unix_ns.saturating_sub(duration_nanos);
    b.profile
}

/// `profile` encoded and gzipped, as pprof files are.
pub fn gzipped(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::profile::StackWait;
    use std::io::Read as _;

    fn frame(function: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: "app.py".into(),
            line: Some(line),
        }
    }

    #[test]
    fn each_stack_is_one_sample_of_its_wait_leaf_first_and_reads_back() {
        let stack = |frames: Vec<Frame>, wait_ns| StackWait {
            frames,
            wait_s: wait_ns as f64 / 1e9,
            wait_ns,
        };
        let p = ContentionProfile {
            wait_s: 3e-6,
            functions: vec![],
            stacks: vec![
                stack(vec![frame("main", 1), frame("spin", 7)], 2000),
                stack(vec![frame("main", 1), frame("nap", 9)], 1000),
            ],
            frames_unnamed: 0,
        };
        let pprof = profile(&p, 2.0, 10_000_000_000);
        let bytes = gzipped(&pprof).expect("gzip");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut raw)
            .expect("gunzip");
        let back = Profile::decode(&raw[..]).expect("decode");
        assert_eq!(back, pprof);
        let name = |i: i64| back.string_table[i as usize].as_str();
        assert_eq!(name(0), "");
        assert_eq!(name(back.sample_type[0].r#type), "gil_wait");
        assert_eq!(name(back.sample_type[0].unit), "nanoseconds");
        let total: i64 = back.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 3000);
        // main is one location shared by both samples, last (root) in each.
        assert_eq!(back.location.len(), 3);
        assert_eq!(back.function.len(), 3);
        let leaf = &back.location[back.sample[0].location_id[0] as usize - 1];
        let f = &back.function[leaf.line[0].function_id as usize - 1];
        assert_eq!((name(f.name), name(f.filename)), ("spin", "app.py"));
        assert_eq!(leaf.line[0].line, 7);
        assert_eq!(back.sample[0].location_id[1], back.sample[1].location_id[1]);
        assert_eq!(back.duration_nanos, 2_000_000_000);
        assert_eq!(back.time_nanos, 8_000_000_000);
    }
}
