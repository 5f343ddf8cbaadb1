//! What a setting of `gilscope run` is: one definition holding its flag, its
//! environment variables, its key in the YAML file, its default, its help text
//! and its parser. The command line, the file reader, the resolution and the
//! README table are all made from these definitions, so a setting cannot be
//! known to one of them and forgotten by another.

/// Where a given value came from, weakest first: a later origin beats an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The definition's default (or the variable that stands for it, `$NODE_NAME`).
    Default,
    /// The YAML file (`--config`).
    File,
    /// An environment variable.
    Env,
    /// A command-line flag.
    Flag,
}

/// A value's origin and its name in error messages: `--interval`,
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, `gilscope.yaml: export.compression`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub origin: Origin,
    pub name: String,
}

/// One value as given (flag argument, variable, YAML scalar), not parsed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub text: String,
    pub source: Source,
}

/// How a setting is written on the command line.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// `--long`.
    pub long: &'static str,
    pub short: Option<char>,
    /// `Some(name)`: takes a value shown as `<name>`; `None`: a switch.
    pub value_name: Option<&'static str>,
    /// The setting's text when the switch is given (`--no-spans` sets `false`).
    pub switch_sets: &'static str,
}

/// What a setting is when nothing gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// This text, parsed like any given value (so the default is written once).
    Value(&'static str),
    /// The value of this variable, weaker than the file (`NODE_NAME`: the
    /// downward API's node name unless the file names one).
    Env(&'static str),
    /// No value; the phrase says what that means ("off", "until SIGTERM").
    Unset(&'static str),
}

/// How many values a setting takes and how the YAML file holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Many {
    /// One value: the strongest source wins.
    One,
    /// A list (a YAML sequence, a repeated flag): every source adds to it.
    List,
    /// `KEY=VALUE` pairs (a YAML mapping, a repeated `KEY=VALUE` flag): every source adds.
    Map,
}

/// Everything about a setting but the type of its value.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    /// Unique name (the clap argument id).
    pub name: &'static str,
    pub flag: Option<Flag>,
    /// Variables, strongest first (`OTEL_EXPORTER_OTLP_METRICS_*` before `OTEL_EXPORTER_OTLP_*`).
    pub env: &'static [&'static str],
    /// Path in the YAML file (`export.spool.dir`).
    pub key: Option<&'static str>,
    pub default: Default,
    pub many: Many,
    pub help: &'static str,
}

impl Def {
    /// The default as the README and `--help` show it.
    pub fn default_text(&self) -> String {
        match self.default {
            Default::Value(text) => text.to_string(),
            Default::Env(var) => format!("${var}"),
            Default::Unset(phrase) => phrase.to_string(),
        }
    }
}

/// A parser of one given text; the error says what is wrong and what is accepted.
pub type Parse<T> = fn(&str) -> Result<T, String>;

/// A definition and how its values parse ([`One`] or [`Items`]).
pub struct Defined<P> {
    pub def: Def,
    parser: P,
}

/// A setting with one value of type `T`: the strongest source gives it.
pub type Setting<T> = Defined<One<T>>;

/// A setting whose sources add up to a list of `T`.
pub type List<T> = Defined<Items<T>>;

/// How a single value parses.
pub struct One<T: 'static> {
    parse: Parse<T>,
    /// Variables in another format (`OTEL_METRIC_EXPORT_INTERVAL` is in milliseconds).
    parse_env: Option<Parse<T>>,
}

/// How the items of a list parse.
pub struct Items<T: 'static> {
    item: Parse<T>,
    /// How a variable's text splits into items (`k=v,k2=v2`).
    split_env: Option<fn(&str) -> Vec<T>>,
}

/// The type-independent side of a setting: what the command line, the file
/// reader and the README are made from, and the check every given value passes.
pub trait Definition: Sync {
    fn def(&self) -> &Def;
    /// Parses `given` and drops the value: is it acceptable?
    fn check(&self, given: &Given) -> Result<(), String>;
}

/// The builders every definition shares; `const` so that each setting is one `static`.
impl<P> Defined<P> {
    const fn named(name: &'static str, many: Many, parser: P) -> Self {
        let def = Def {
            name,
            flag: None,
            env: &[],
            key: None,
            default: Default::Unset(""),
            many,
            help: "",
        };
        Defined { def, parser }
    }

    /// `--long <value_name>` (repeatable for a list).
    pub const fn flag(mut self, long: &'static str, value_name: &'static str) -> Self {
        self.def.flag = Some(Flag {
            long,
            short: None,
            value_name: Some(value_name),
            switch_sets: "",
        });
        self
    }

    /// `--long` without a value; given, the setting's text is `sets`.
    pub const fn switch(mut self, long: &'static str, sets: &'static str) -> Self {
        self.def.flag = Some(Flag {
            long,
            short: None,
            value_name: None,
            switch_sets: sets,
        });
        self
    }

    /// `-c` next to the long flag.
    pub const fn short(mut self, short: char) -> Self {
        if let Some(mut flag) = self.def.flag {
            flag.short = Some(short);
            self.def.flag = Some(flag);
        }
        self
    }

    /// Variables, strongest first.
    pub const fn env(mut self, vars: &'static [&'static str]) -> Self {
        self.def.env = vars;
        self
    }

    /// Path in the YAML file.
    pub const fn key(mut self, path: &'static str) -> Self {
        self.def.key = Some(path);
        self
    }

    pub const fn default(mut self, default: Default) -> Self {
        self.def.default = default;
        self
    }

    pub const fn help(mut self, help: &'static str) -> Self {
        self.def.help = help;
        self
    }
}

impl<T> Setting<T> {
    /// A setting called `name`, parsed by `parse`; the rest is added by the builders.
    pub const fn new(name: &'static str, parse: Parse<T>) -> Self {
        let parser = One {
            parse,
            parse_env: None,
        };
        Defined::named(name, Many::One, parser)
    }

    /// The variables are written differently from the flag (milliseconds, not `10s`).
    pub const fn env_format(mut self, parse: Parse<T>) -> Self {
        self.parser.parse_env = Some(parse);
        self
    }

    /// Parses a given value with the parser for its origin.
    pub fn parse(&self, given: &Given) -> Result<T, String> {
        match (given.source.origin, self.parser.parse_env) {
            (Origin::Env, Some(parse)) => parse(&given.text),
            _ => (self.parser.parse)(&given.text),
        }
    }
}

impl<T> List<T> {
    /// A list called `name`, each item parsed by `item`.
    pub const fn new(name: &'static str, item: Parse<T>) -> Self {
        let parser = Items {
            item,
            split_env: None,
        };
        Defined::named(name, Many::List, parser)
    }

    /// The file holds a mapping; each entry is an item `KEY=VALUE`.
    pub const fn pairs(mut self) -> Self {
        self.def.many = Many::Map;
        self
    }

    /// A variable holds several items, split by `split`.
    pub const fn split_env(mut self, split: fn(&str) -> Vec<T>) -> Self {
        self.parser.split_env = Some(split);
        self
    }

    /// Parses a given value into its items (a variable may hold several).
    pub fn parse(&self, given: &Given) -> Result<Vec<T>, String> {
        match (given.source.origin, self.parser.split_env) {
            (Origin::Env, Some(split)) => Ok(split(&given.text)),
            _ => (self.parser.item)(&given.text).map(|item| vec![item]),
        }
    }
}

impl<T> Definition for Setting<T> {
    fn def(&self) -> &Def {
        &self.def
    }

    fn check(&self, given: &Given) -> Result<(), String> {
        self.parse(given).map(drop)
    }
}

impl<T> Definition for List<T> {
    fn def(&self) -> &Def {
        &self.def
    }

    fn check(&self, given: &Given) -> Result<(), String> {
        self.parse(given).map(drop)
    }
}
