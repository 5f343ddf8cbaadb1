//! The README's table of `gilscope run` settings, made from the definitions: a
//! test keeps the README's copy equal to it (and rewrites it when asked), so a
//! setting cannot be added, renamed or re-defaulted without the table following.

use crate::cli::settings::def::{Def, Default};
use crate::cli::settings::defs::ALL;

/// The line before the table in README.md.
pub const BEGIN: &str = "<!-- settings table: made from agent/src/cli/settings/defs.rs; \
GILSCOPE_UPDATE_README=1 cargo test readme_settings rewrites it -->";
/// The line after it.
pub const END: &str = "<!-- end of settings table -->";

/// The table in Markdown, one row per setting in definition order.
pub fn markdown() -> String {
    let mut out = String::from(
        "| file key | flag | environment | default | meaning |\n|---|---|---|---|---|\n",
    );
    for def in ALL.iter().map(|s| s.def()) {
        out += &row(def);
    }
    out
}

fn row(def: &Def) -> String {
    let key = def.key.map_or("—".to_string(), |k| format!("`{k}`"));
    let flag = match def.flag {
        None => "—".to_string(),
        Some(f) => {
            let short = f.short.map_or(String::new(), |c| format!("`-{c}`, "));
            let value = f.value_name.map_or(String::new(), |v| format!(" {v}"));
            format!("{short}`--{}{value}`", f.long)
        }
    };
    let env = if def.env.is_empty() {
        "—".to_string()
    } else {
        def.env
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let default = match def.default {
        Default::Value(_) | Default::Env(_) => format!("`{}`", def.default_text()),
        Default::Unset(phrase) => phrase.to_string(),
    };
    let help = def.help.replace('|', "\\|");
    format!("| {key} | {flag} | {env} | {default} | {help} |\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README.md's table is [`markdown`]; with `GILSCOPE_UPDATE_README=1` this
    /// rewrites it instead of failing.
    #[test]
    fn readme_settings_table_is_made_from_the_definitions() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).expect("read README.md");
        let start = readme
            .find(BEGIN)
            .expect("README.md has the table's begin line")
            + BEGIN.len();
        let end = readme
            .find(END)
            .expect("README.md has the table's end line");
        let want = format!("\n{}", markdown());
        if readme[start..end] == want {
            return;
        }
        if std::env::var_os("GILSCOPE_UPDATE_README").is_some() {
            let updated = format!("{}{want}{}", &readme[..start], &readme[end..]);
            std::fs::write(&path, updated).expect("write README.md");
            return;
        }
        panic!(
            "README.md's settings table is not the definitions' (run \
             GILSCOPE_UPDATE_README=1 cargo test readme_settings); it should be:\n{want}"
        );
    }
}
