//! Resolution, in one generic pass over the definitions: every value given for
//! every setting is collected from the weakest source to the strongest
//! (default < file < environment < flags) and checked by the setting's parser,
//! so a bad value stops the daemon even where a stronger source overrides it.
//! Read back typed, a single value is the strongest one, a list all of them.

use std::collections::BTreeMap;

use crate::cli::settings::def::{Def, Default, Given, List, Many, Origin, Setting, Source};
use crate::cli::settings::defs::ALL;
use crate::cli::settings::file::FileValues;
use crate::cli::settings::flags::Flags;
use crate::error::RunError;

/// Every setting's given values, weakest first.
#[derive(Debug)]
pub struct Layers {
    values: BTreeMap<&'static str, Vec<Given>>,
    file: FileValues,
}

impl Layers {
    /// Collects and checks every given value of every setting.
    pub fn gather(
        flags: &Flags,
        file: FileValues,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Layers, RunError> {
        let mut values = BTreeMap::new();
        for setting in ALL {
            let def = setting.def();
            let mut given: Vec<Given> = default(def, env).into_iter().collect();
            given.extend(file.of(def.name).cloned());
            given.extend(variable(def, env));
            given.extend(flags.of(def.name).cloned());
            for g in &given {
                setting
                    .check(g)
                    .map_err(|why| RunError::setting(&g.source.name, why))?;
            }
            values.insert(def.name, given);
        }
        Ok(Layers { values, file })
    }

    /// The strongest value of a setting and where it came from; `None`: not
    /// given and no default.
    pub fn get_with_source<T>(&self, s: &Setting<T>) -> Result<Option<(T, &Source)>, RunError> {
        let Some(given) = self.values.get(s.def.name).and_then(|v| v.last()) else {
            return Ok(None);
        };
        let value = s
            .parse(given)
            .map_err(|why| RunError::setting(&given.source.name, why))?;
        Ok(Some((value, &given.source)))
    }

    /// The strongest value of a setting; `None`: not given and no default.
    pub fn get<T>(&self, s: &Setting<T>) -> Result<Option<T>, RunError> {
        Ok(self.get_with_source(s)?.map(|(value, _)| value))
    }

    /// The value of a setting that has a default.
    pub fn value<T>(&self, s: &Setting<T>) -> Result<T, RunError> {
        self.get(s)?.ok_or_else(|| {
            RunError::setting(s.def.name, "has no value and no default (a gilscope bug)")
        })
    }

    /// Every item of a list, from the weakest source to the strongest.
    pub fn list<T>(&self, s: &List<T>) -> Result<Vec<T>, RunError> {
        let mut items = Vec::new();
        for given in self.values.get(s.def.name).into_iter().flatten() {
            items.extend(
                s.parse(given)
                    .map_err(|why| RunError::setting(&given.source.name, why))?,
            );
        }
        Ok(items)
    }

    /// A file key as errors name it (`gilscope.yaml: tenant`), for what no
    /// single setting owns.
    pub fn file_key(&self, key: &str) -> String {
        self.file.source_name(key)
    }
}

/// The default as the weakest given value: a value, or a variable standing for it.
fn default(def: &Def, env: &dyn Fn(&str) -> Option<String>) -> Option<Given> {
    if def.many != Many::One {
        return None;
    }
    let (text, name) = match def.default {
        Default::Value(text) => (text.to_string(), format!("the default of {}", def.name)),
        Default::Env(var) => (set(env, var)?, var.to_string()),
        Default::Unset(_) => return None,
    };
    let source = Source {
        origin: Origin::Default,
        name,
    };
    Some(Given { text, source })
}

/// The first of the setting's variables that is set (an empty one is not).
fn variable(def: &Def, env: &dyn Fn(&str) -> Option<String>) -> Option<Given> {
    def.env.iter().find_map(|&var| {
        let source = Source {
            origin: Origin::Env,
            name: var.to_string(),
        };
        set(env, var).map(|text| Given { text, source })
    })
}

fn set(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    env(var).filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::cli::settings::defs::{HEADERS, INTERVAL, NODE_NAME};
    use crate::cli::settings::file::parse_file;

    fn file(text: &str) -> FileValues {
        parse_file(Path::new("g.yaml"), text).expect("valid file")
    }

    fn flags(args: &[&str]) -> Flags {
        Flags::parse(args).expect("flags")
    }

    fn interval(flags: &Flags, file: FileValues, env: &dyn Fn(&str) -> Option<String>) -> Duration {
        let layers = Layers::gather(flags, file, env).expect("gather");
        layers.value(&INTERVAL).expect("interval")
    }

    #[test]
    fn each_source_beats_the_weaker_ones() {
        let none = |_: &str| None;
        let env = |k: &str| (k == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "1000".to_string());
        let secs = Duration::from_secs;
        assert_eq!(
            interval(&Flags::default(), FileValues::none(), &none),
            secs(10)
        );
        assert_eq!(
            interval(&Flags::default(), file("interval: 2s"), &none),
            secs(2)
        );
        assert_eq!(
            interval(&Flags::default(), file("interval: 2s"), &env),
            secs(1)
        );
        let three = flags(&["--interval", "3s"]);
        assert_eq!(interval(&three, file("interval: 2s"), &env), secs(3));
        // An empty variable is not set.
        let empty = |k: &str| (k == "OTEL_METRIC_EXPORT_INTERVAL").then(String::new);
        assert_eq!(
            interval(&Flags::default(), file("interval: 2s"), &empty),
            secs(2)
        );
    }

    /// A typo in the file is reported even when a flag overrides it today.
    #[test]
    fn a_value_a_stronger_source_overrides_is_still_checked() {
        let err = Layers::gather(
            &flags(&["--interval", "3s"]),
            file("interval: soon"),
            &|_| None,
        )
        .expect_err("bad file value");
        assert!(err.to_string().starts_with("g.yaml: interval: "), "{err}");
    }

    #[test]
    fn a_list_takes_every_source_the_file_first() {
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_HEADERS").then(|| "b=2,c=3".to_string());
        let layers = Layers::gather(
            &flags(&["--header", "d=4"]),
            file("export:\n  headers: {a: 1}\n"),
            &env,
        )
        .expect("gather");
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            layers.list(&HEADERS).expect("headers"),
            pairs(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")])
        );
    }

    /// `NODE_NAME` stands for the default: the file's node name beats it.
    #[test]
    fn a_variable_standing_for_the_default_is_weaker_than_the_file() {
        let env = |k: &str| (k == "NODE_NAME").then(|| "node-a".to_string());
        let from = |file: FileValues| {
            let layers = Layers::gather(&Flags::default(), file, &env).expect("gather");
            let (name, source) = layers
                .get_with_source(&NODE_NAME)
                .expect("parse")
                .expect("set");
            (name, source.name.clone())
        };
        assert_eq!(
            from(FileValues::none()),
            ("node-a".into(), "NODE_NAME".into())
        );
        assert_eq!(
            from(file("kubernetes: {node_name: n1}")),
            ("n1".into(), "g.yaml: kubernetes.node_name".into())
        );
    }
}
