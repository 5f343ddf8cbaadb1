//! `gilscope top`: a live view of GIL contention on the host, refreshed every second.
//!
//! The list shows every watched CPython process with what it did in the last
//! interval (GIL utilization, queue length, effective parallelism, CPU, the
//! thread that waited most, the diagnosis); Enter drills into one process's
//! threads. [`App`] holds the view state and reacts to keys without touching the
//! terminal, so its behaviour is unit-tested; [`run`] owns the terminal.
//! `--batch` prints plain-text frames instead, for logs and pipes.

use std::io::Write;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use crate::core::report::{Severity, ThreadReport};
use crate::error::Result;
mod code;
pub mod live;

use live::{LiveSet, ProcessView};

/// What the process list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// GIL queue length: how many threads wait for the GIL on average.
    Queue,
    Utilization,
    Parallelism,
    Cpu,
    Pid,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            SortBy::Queue => SortBy::Utilization,
            SortBy::Utilization => SortBy::Parallelism,
            SortBy::Parallelism => SortBy::Cpu,
            SortBy::Cpu => SortBy::Pid,
            SortBy::Pid => SortBy::Queue,
        }
    }

    fn label(self) -> &'static str {
        match self {
            SortBy::Queue => "GIL queue",
            SortBy::Utilization => "GIL utilization",
            SortBy::Parallelism => "parallelism",
            SortBy::Cpu => "CPU",
            SortBy::Pid => "pid",
        }
    }
}

/// The view state: the latest reports, the order, the selection, the drill-down.
#[derive(Debug)]
pub struct App {
    pub views: Vec<ProcessView>,
    pub sort: SortBy,
    /// Selected process, by pid (stays on it across refreshes).
    pub selected: Option<u32>,
    /// The process drilled into.
    pub detail: Option<u32>,
    pub quit: bool,
    pub refreshes: u64,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An empty view sorted by GIL queue length.
    pub fn new() -> Self {
        Self {
            views: Vec::new(),
            sort: SortBy::Queue,
            selected: None,
            detail: None,
            quit: false,
            refreshes: 0,
        }
    }

    /// Takes a new set of reports, keeping the order and the selection.
    pub fn update(&mut self, views: Vec<ProcessView>) {
        self.views = views;
        self.refreshes += 1;
        self.order();
        if self
            .selected
            .is_none_or(|pid| !self.views.iter().any(|v| v.pid == pid))
        {
            self.selected = self.views.first().map(|v| v.pid);
        }
        if let Some(pid) = self.detail {
            if !self.views.iter().any(|v| v.pid == pid) {
                self.detail = None;
            }
        }
    }

    fn order(&mut self) {
        let key = |v: &ProcessView| match self.sort {
            SortBy::Queue => v.process.gil_queue_length,
            SortBy::Utilization => v.process.gil_utilization,
            SortBy::Parallelism => v.process.effective_parallelism,
            SortBy::Cpu => v.process.cpu_s,
            SortBy::Pid => -f64::from(v.pid),
        };
        self.views
            .sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.pid.cmp(&b.pid)));
    }

    fn selected_index(&self) -> Option<usize> {
        let pid = self.selected?;
        self.views.iter().position(|v| v.pid == pid)
    }

    fn move_selection(&mut self, delta: isize) {
        if self.views.is_empty() {
            return;
        }
        let i = self.selected_index().unwrap_or(0) as isize + delta;
        let i = i.clamp(0, self.views.len() as isize - 1) as usize;
        self.selected = Some(self.views[i].pid);
    }

    /// Reacts to one key: q quits (Esc leaves a drill-down first), arrows/j/k
    /// move, Enter drills in, s cycles the sort order, g/w/p/c/n pick one.
    pub fn key(&mut self, code: KeyCode) {
        match code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Esc if self.detail.is_none() => self.quit = true,
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => self.detail = None,
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Enter | KeyCode::Right => self.detail = self.selected,
            KeyCode::Char('s') => self.set_sort(self.sort.next()),
            KeyCode::Char('g') => self.set_sort(SortBy::Utilization),
            KeyCode::Char('w') => self.set_sort(SortBy::Queue),
            KeyCode::Char('p') => self.set_sort(SortBy::Parallelism),
            KeyCode::Char('c') => self.set_sort(SortBy::Cpu),
            KeyCode::Char('n') => self.set_sort(SortBy::Pid),
            _ => {}
        }
    }

    fn set_sort(&mut self, sort: SortBy) {
        self.sort = sort;
        self.order();
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// The thread that waited longest for the GIL, as "name 72%".
fn top_waiter(v: &ProcessView) -> String {
    v.threads
        .iter()
        .max_by(|a, b| a.gil_wait_s.total_cmp(&b.gil_wait_s))
        .filter(|t| t.gil_wait_s > 0.0)
        .map(|t| {
            format!(
                "{} {}",
                thread_label(t),
                pct(t.gil_wait_s / v.process.wall_s.max(1e-9))
            )
        })
        .unwrap_or_else(|| "-".into())
}

fn thread_label(t: &ThreadReport) -> String {
    if t.name.is_empty() {
        t.tid.to_string()
    } else {
        format!("{}({})", t.name, t.tid)
    }
}

fn verdict(v: &ProcessView) -> String {
    v.diagnosis
        .first()
        .map(|d| d.kind.to_string())
        .unwrap_or_default()
}

const LIST_HEADER: [&str; 10] = [
    "PID",
    "COMMAND",
    "PY",
    "GIL",
    "QUEUE",
    "PAR",
    "CPU",
    "SW/s",
    "TOP WAITER",
    "DIAGNOSIS",
];

/// The command with its program shortened to a file name (`python3.11 app.py`).
fn short_command(command: &str) -> String {
    let (program, rest) = command.split_once(' ').unwrap_or((command, ""));
    let program = program.rsplit('/').next().unwrap_or(program);
    if rest.is_empty() {
        program.to_string()
    } else {
        format!("{program} {rest}")
    }
}

fn list_cells(v: &ProcessView) -> [String; 10] {
    let p = &v.process;
    [
        v.pid.to_string(),
        short_command(&v.command),
        v.version.clone(),
        pct(p.gil_utilization),
        format!("{:.2}", p.gil_queue_length),
        format!("{:.2}", p.effective_parallelism),
        pct(p.cpu_s / p.wall_s.max(1e-9)),
        format!("{:.0}", p.gil_switches_per_s),
        top_waiter(v),
        verdict(v),
    ]
}

const THREAD_HEADER: [&str; 8] = [
    "TID",
    "THREAD",
    "CPU",
    "GIL WAIT",
    "HOLD",
    "WAITS",
    "P99",
    "BLOCKED BY",
];

fn thread_cells(t: &ThreadReport, wall: f64) -> [String; 8] {
    let blocked: Vec<String> = t
        .blocked_by
        .iter()
        .take(3)
        .map(|b| {
            let who = if b.tid == 0 {
                "?".into()
            } else {
                b.tid.to_string()
            };
            format!("{who} {}", pct(b.gil_wait_s / wall.max(1e-9)))
        })
        .collect();
    [
        t.tid.to_string(),
        t.name.clone(),
        pct(t.cpu_s / wall.max(1e-9)),
        pct(t.gil_wait_s / wall.max(1e-9)),
        pct(t.gil_hold_share),
        t.gil_waits.to_string(),
        format!("{:.1}ms", t.gil_wait_p99_us / 1000.0),
        blocked.join(", "),
    ]
}

fn severity_style(s: Severity) -> Style {
    match s {
        Severity::Critical => Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        Severity::Warning => Style::new().add_modifier(Modifier::BOLD),
        Severity::Info => Style::new(),
    }
}

/// Draws the current view.
pub fn draw(frame: &mut Frame, app: &App, state: &mut TableState) {
    let [title, body, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Line::from(format!(
            "gilscope top — {} CPython processes, sorted by {}, refresh #{}",
            app.views.len(),
            app.sort.label(),
            app.refreshes
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    let detail = app
        .detail
        .and_then(|pid| app.views.iter().find(|v| v.pid == pid));
    match detail {
        None => {
            draw_list(frame, app, state, body);
            frame.render_widget(
                Line::from("↑↓ select  Enter threads  s sort  g/w/p/c/n sort by util/queue/par/cpu/pid  q quit"),
                help,
            );
        }
        Some(v) => {
            draw_detail(frame, v, body);
            frame.render_widget(Line::from("Esc back  q quit"), help);
        }
    }
}

/// The process list.
fn draw_list(frame: &mut Frame, app: &App, state: &mut TableState, area: Rect) {
    let rows = app.views.iter().map(|v| {
        let style = v
            .diagnosis
            .first()
            .map_or(Style::new(), |d| severity_style(d.severity));
        Row::new(list_cells(v)).style(style)
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Min(16),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(22),
        Constraint::Length(24),
    ];
    let table = Table::new(rows, widths)
        .header(Row::new(LIST_HEADER).style(Style::new().add_modifier(Modifier::BOLD)))
        .row_highlight_style(Style::new().add_modifier(Modifier::UNDERLINED))
        .block(Block::bordered().title("processes (last interval)"));
    state.select(app.selected_index());
    frame.render_stateful_widget(table, area, state);
}

/// One process: its figures and diagnoses above, its threads below.
fn draw_detail(frame: &mut Frame, v: &ProcessView, area: Rect) {
    let p = &v.process;
    let mut lines = vec![Line::from(format!(
        "pid {}  {}  CPython {}  GIL {}  queue {:.2}  parallelism {:.2}  switches {:.0}/s  \
         speedup without GIL ≈ {:.2}x",
        v.pid,
        v.command,
        v.version,
        pct(p.gil_utilization),
        p.gil_queue_length,
        p.effective_parallelism,
        p.gil_switches_per_s,
        v.estimate.speedup_without_gil
    ))];
    for d in &v.diagnosis {
        lines.push(
            Line::from(format!("{}: {}", d.kind, d.summary)).style(severity_style(d.severity)),
        );
        lines.push(Line::from(format!("  {}", d.advice)));
    }
    lines.extend(code::code_lines(v).into_iter().map(Line::from));
    // Rows the wrapped paragraph needs, plus the border.
    let inner = usize::from(area.width.saturating_sub(2).max(1));
    let wrapped: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
    let height = (u16::try_from(wrapped).unwrap_or(u16::MAX).saturating_add(2))
        .min(area.height.saturating_sub(4))
        .max(3);
    let [head, threads] =
        Layout::vertical([Constraint::Length(height), Constraint::Min(3)]).areas(area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title("process")),
        head,
    );
    let rows = v
        .threads
        .iter()
        .map(|t| Row::new(thread_cells(t, p.wall_s)));
    let widths = [
        Constraint::Length(8),
        Constraint::Min(16),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Min(20),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(THREAD_HEADER).style(Style::new().add_modifier(Modifier::BOLD)))
            .block(Block::bordered().title("threads (last interval)")),
        threads,
    );
}

/// One plain-text frame (`--batch`): the list, like `top -b`.
pub fn text_frame(app: &App) -> String {
    let mut out = format!(
        "gilscope top: {} CPython processes, sorted by {}\n",
        app.views.len(),
        app.sort.label()
    );
    out.push_str(&format!(
        "{:>8} {:<30} {:>7} {:>5} {:>6} {:>5} {:>5} {:>6}  {:<22} {}\n",
        LIST_HEADER[0],
        LIST_HEADER[1],
        LIST_HEADER[2],
        LIST_HEADER[3],
        LIST_HEADER[4],
        LIST_HEADER[5],
        LIST_HEADER[6],
        LIST_HEADER[7],
        LIST_HEADER[8],
        LIST_HEADER[9]
    ));
    for v in &app.views {
        let c = list_cells(v);
        let command: String = c[1].chars().take(30).collect();
        out.push_str(&format!(
            "{:>8} {:<30} {:>7} {:>5} {:>6} {:>5} {:>5} {:>6}  {:<22} {}\n",
            c[0], command, c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
        ));
    }
    out
}

/// Options of `gilscope top`.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Only these processes; `None`: every CPython process on the host.
    pub pids: Option<Vec<u32>>,
    pub interval: Duration,
    pub sample_hz: u32,
    /// Measure event-loop lag (`--event-loops`).
    pub event_loops: bool,
    /// Print this many text frames instead of the interactive view.
    pub batch: Option<u64>,
}

/// Runs the live view until `q` (or `batch` frames are printed).
pub fn run(opts: &TopOptions) -> Result<()> {
    let mut live = LiveSet::new(opts.pids.clone(), opts.sample_hz, opts.event_loops)?;
    let mut app = App::new();
    // The first interval starts now; reports come one interval later.
    live.refresh();
    if let Some(frames) = opts.batch {
        let mut stdout = std::io::stdout();
        for _ in 0..frames {
            std::thread::sleep(opts.interval);
            app.update(live.refresh());
            let _ = stdout.write_all(text_frame(&app).as_bytes());
            let _ = stdout.write_all(b"\n");
            let _ = stdout.flush();
        }
        live.close();
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let mut state = TableState::default();
    let mut next = Instant::now() + opts.interval;
    let outcome = loop {
        if let Err(e) = terminal.draw(|f| draw(f, &app, &mut state)) {
            break Err(crate::error::Error::Internal(format!(
                "drawing the terminal: {e}"
            )));
        }
        let wait = next.saturating_duration_since(Instant::now());
        match event::poll(wait) {
            Ok(true) => {
                if let Ok(Event::Key(k)) = event::read() {
                    if k.kind == KeyEventKind::Press {
                        app.key(k.code);
                    }
                }
            }
            Ok(false) => {}
            Err(e) => break Err(crate::error::Error::Internal(format!("reading keys: {e}"))),
        }
        if app.quit {
            break Ok(());
        }
        if Instant::now() >= next {
            app.update(live.refresh());
            next += opts.interval;
            if next < Instant::now() {
                next = Instant::now() + opts.interval;
            }
        }
    };
    ratatui::restore();
    live.close();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::analyse::SPEEDUP_MODEL;
    use crate::core::report::{Estimate, ProcessReport};

    fn view(pid: u32, queue: f64, util: f64) -> ProcessView {
        ProcessView {
            pid,
            command: format!("python3 app{pid}.py"),
            version: "3.11.7".into(),
            process: ProcessReport {
                wall_s: 1.0,
                cpu_s: 1.0,
                gil_wait_s: queue,
                gil_waits: 10,
                gil_utilization: util,
                gil_queue_length: queue,
                effective_parallelism: 1.0,
                gil_switches_per_s: 200.0,
                cores_available: 2.0,
                ..ProcessReport::default()
            },
            threads: vec![],
            diagnosis: vec![],
            estimate: Estimate {
                speedup_without_gil: 1.0,
                cpu_demand_cores: 1.0,
                model: SPEEDUP_MODEL.into(),
            },
            profile: None,
            event_loops: vec![],
        }
    }

    #[test]
    fn the_busiest_gil_comes_first_and_the_selection_follows_its_process() {
        let mut app = App::new();
        app.update(vec![view(10, 0.1, 0.2), view(20, 3.0, 0.99)]);
        assert_eq!(app.views[0].pid, 20);
        assert_eq!(app.selected, Some(20));
        app.key(KeyCode::Down);
        assert_eq!(app.selected, Some(10));
        // A refresh reorders nothing away from the selected process.
        app.update(vec![view(20, 3.0, 0.99), view(10, 0.1, 0.2)]);
        assert_eq!(app.selected, Some(10));
        app.key(KeyCode::Char('n'));
        assert_eq!(app.views[0].pid, 10, "pid order ascending");
    }

    #[test]
    fn enter_drills_in_esc_comes_back_and_q_quits() {
        let mut app = App::new();
        app.update(vec![view(10, 0.1, 0.2)]);
        app.key(KeyCode::Enter);
        assert_eq!(app.detail, Some(10));
        app.key(KeyCode::Esc);
        assert_eq!(app.detail, None);
        assert!(!app.quit);
        app.key(KeyCode::Char('q'));
        assert!(app.quit);
    }

    #[test]
    fn a_process_that_exits_leaves_the_drill_down() {
        let mut app = App::new();
        app.update(vec![view(10, 0.1, 0.2)]);
        app.key(KeyCode::Enter);
        app.update(vec![]);
        assert_eq!(app.detail, None);
        assert_eq!(app.selected, None);
    }

    #[test]
    fn sort_keys_cycle_through_every_order() {
        let mut app = App::new();
        let start = app.sort;
        for _ in 0..5 {
            app.key(KeyCode::Char('s'));
        }
        assert_eq!(app.sort, start);
        assert!(text_frame(&app).contains("sorted by GIL queue"));
    }

    #[test]
    fn commands_show_the_program_name_not_its_path() {
        assert_eq!(
            short_command("/root/.pyenv/versions/3.11.7/bin/python3.11 app.py -x"),
            "python3.11 app.py -x"
        );
        assert_eq!(short_command("python3"), "python3");
    }
}
