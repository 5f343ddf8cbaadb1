//! The flag layer: `gilscope run`'s command line, built from the definitions
//! with clap's builder API, and the values one command line gave.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::cli::settings::def::{Def, Given, Many, Origin, Source};
use crate::cli::settings::defs::{ALL, CONFIG};

/// The flags given to `gilscope run`, by setting, in definition order.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    given: Vec<(&'static str, Given)>,
}

impl Flags {
    /// Parses `gilscope run`'s arguments (what follows `run`).
    pub fn parse<I, T>(args: I) -> Result<Flags, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let argv = std::iter::once(OsString::from("run")).chain(args.into_iter().map(Into::into));
        let matches =
            <Flags as clap::Args>::augment_args(Command::new("run")).try_get_matches_from(argv)?;
        <Flags as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// What the flags gave for the setting called `name`.
    pub fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Given> + 'a {
        self.given
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, g)| g)
    }

    /// `--config`: the YAML file to read, if any.
    pub fn config(&self) -> Option<PathBuf> {
        self.of(CONFIG.def.name)
            .last()
            .and_then(|g| CONFIG.parse(g).ok())
    }
}

/// The help line: the definition's text, then its default, variables and file key.
fn help(def: &Def) -> String {
    let mut text = format!("{} [default: {}]", def.help, def.default_text());
    if !def.env.is_empty() {
        text += &format!(" [env: {}]", def.env.join(", "));
    }
    if let Some(key) = def.key {
        text += &format!(" [file: {key}]");
    }
    text
}

/// The clap argument of a definition that has a flag.
fn arg(def: &Def) -> Option<Arg> {
    let flag = def.flag?;
    let mut arg = Arg::new(def.name).long(flag.long).help(help(def));
    if let Some(short) = flag.short {
        arg = arg.short(short);
    }
    Some(match (flag.value_name, def.many) {
        (None, _) => arg.action(ArgAction::SetTrue),
        (Some(name), Many::One) => arg.value_name(name).action(ArgAction::Set),
        (Some(name), Many::List | Many::Map) => arg.value_name(name).action(ArgAction::Append),
    })
}

impl clap::Args for Flags {
    fn augment_args(cmd: Command) -> Command {
        cmd.next_line_help(true)
            .args(ALL.iter().filter_map(|s| arg(s.def())))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for Flags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Vec::new();
        for def in ALL.iter().map(|s| s.def()) {
            let Some(flag) = def.flag else {
                continue;
            };
            let source = Source {
                origin: Origin::Flag,
                name: format!("--{}", flag.long),
            };
            let texts: Vec<String> = match flag.value_name {
                None if matches.get_flag(def.name) => vec![flag.switch_sets.to_string()],
                None => Vec::new(),
                Some(_) => matches
                    .get_many::<String>(def.name)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect(),
            };
            given.extend(texts.into_iter().map(|text| {
                let source = source.clone();
                (def.name, Given { text, source })
            }));
        }
        Ok(Flags { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}
