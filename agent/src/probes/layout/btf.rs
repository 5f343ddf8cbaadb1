//! Test helpers: the structs and enums clang emitted into a compiled BPF
//! object's BTF, read with `bpftool`, so each Rust mirror can be checked against
//! the object of the program it talks to.

use std::collections::HashMap;
use std::process::Command;

/// Member name -> byte offset.
pub type Members = HashMap<String, usize>;

/// `bpftool btf dump file OBJECT format raw` of an object built into OUT_DIR.
fn dump(object: &str) -> String {
    let path = format!("{}/{object}", env!("OUT_DIR"));
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file", &path, "format", "raw"])
        .output()
        .expect("bpftool must be installed (apt-get install bpftool) to check the BPF layouts");
    assert!(out.status.success(), "bpftool failed on {path}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number after `key=` on a BTF line.
fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    line.split(key)
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
}

/// The entries of every BTF type of `kind` (`STRUCT`, `ENUM`): its header line
/// and its member lines.
fn types<'a>(text: &'a str, kind: &str) -> Vec<(&'a str, Vec<&'a str>)> {
    let marker = format!("] {kind} '");
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        if let Some((_, rest)) = line.split_once(marker.as_str()) {
            out.push((rest, Vec::new()));
            open = true;
        } else if open && line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push(line);
            }
        } else {
            open = false;
        }
    }
    out
}

/// The type's name: a header line past its opening quote reads `name' size=...`.
fn type_name(head: &str) -> String {
    head.split('\'').next().unwrap_or_default().to_string()
}

/// A member's name: a member line reads `\t'name' type_id=...`.
fn member_name(line: &str) -> String {
    line.trim()
        .split('\'')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// struct name -> (size, member name -> byte offset).
pub fn structs(object: &str) -> HashMap<String, (usize, Members)> {
    types(&dump(object), "STRUCT")
        .into_iter()
        .map(|(head, members)| {
            let size = field(head, "size=").unwrap_or(0);
            let members = members
                .iter()
                .map(|m| {
                    let bits: usize = field(m, "bits_offset=").unwrap_or(usize::MAX);
                    (member_name(m), bits / 8)
                })
                .collect();
            (type_name(head), (size, members))
        })
        .collect()
}

/// enum name -> (constant name -> value).
pub fn enums(object: &str) -> HashMap<String, HashMap<String, i64>> {
    types(&dump(object), "ENUM")
        .into_iter()
        .map(|(head, members)| {
            let values = members
                .iter()
                .map(|m| (member_name(m), field(m, "val=").unwrap_or(i64::MIN)))
                .collect();
            (type_name(head), values)
        })
        .collect()
}

/// Asserts that enum `name` of `object` has exactly the constants `expected`.
pub fn assert_enum(object: &str, name: &str, expected: &[(&str, i64)]) {
    let enums = enums(object);
    let found = enums
        .get(name)
        .unwrap_or_else(|| panic!("enum {name} in {object}'s BTF"));
    for (constant, value) in expected {
        assert_eq!(found.get(*constant).copied(), Some(*value), "{constant}");
    }
    assert_eq!(
        found.len(),
        expected.len(),
        "{name} has constants the Rust mirror lacks"
    );
}

/// Asserts that the C struct `$c_name` in `$structs` has the size of `$ty` and
/// exactly the members listed, at the offsets of the Rust fields.
macro_rules! assert_layout {
    ($structs:expr, $c_name:literal, $ty:ty, [$($field:ident),+ $(,)?]) => {{
        let (size, members) = $structs
            .get($c_name)
            .unwrap_or_else(|| panic!("struct {} not in the BPF object's BTF", $c_name));
        assert_eq!(*size, std::mem::size_of::<$ty>(), "size of {}", $c_name);
        let mut checked = 0;
        $(
            let name = stringify!($field);
            assert_eq!(
                members.get(name).copied(),
                Some(std::mem::offset_of!($ty, $field)),
                "offset of {}.{}", $c_name, name
            );
            checked += 1;
        )+
        assert_eq!(checked, members.len(), "{} has members the Rust mirror lacks", $c_name);
    }};
}
pub(crate) use assert_layout;
