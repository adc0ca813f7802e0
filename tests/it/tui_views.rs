//! The workbench. Keys and mouse on a hand-built registry snapshot (no training): which
//! commands they return. Then against a registry filled by real tiny runs: every view rendered
//! with ratatui's TestBackend at 80x24, and commands carried out by `Effects` on their threads,
//! reporting back as messages.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use mvlab::config;
use mvlab::config::Monitor;
use mvlab::jobs;
use mvlab::registry::{CheckpointRow, Registry, RunRow};
use mvlab::status::{CheckpointKind, RunStatus};
use mvlab::tui::app::{App, Command, Modal, Pending, Tab};
use mvlab::tui::background::{self, Msg};
use mvlab::tui::effects::Effects;
use mvlab::tui::state::{ExperimentEntry, RunDetail, Snapshot, Wanted};
use ratatui::layout::Rect;
use ratatui::{Terminal, backend::TestBackend};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

struct Fixture {
    _dir: tempfile::TempDir,
    app: App,
    effects: Effects,
    rx: Receiver<Msg>,
    reg: Registry,
    seeds: background::SeedCache,
}

/// The sweep row of seed group `id` (`run --seeds N`).
fn seed_group_row(id: i64) -> mvlab::registry::SweepRow {
    mvlab::registry::SweepRow {
        id,
        experiment_id: None,
        name: "seeded".into(),
        config: String::new(),
        method: Default::default(),
        prune: Default::default(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        kind: mvlab::status::SweepKind::Seeds,
        path: None,
        overrides: "[]".into(),
        started_s: None,
        sbatch: None,
        slurm_job: None,
    }
}

fn press(app: &mut App, code: KeyCode) -> Option<Command> {
    app.handle_key(KeyEvent::new(code, KeyModifiers::NONE))
}

/// Presses a key and starts what it asks for (its messages come through `pump`).
fn key(f: &mut Fixture, code: KeyCode) {
    if let Some(command) = press(&mut f.app, code) {
        f.effects.perform(command);
    }
}

fn keys(f: &mut Fixture, s: &str) {
    for c in s.chars() {
        key(f, KeyCode::Char(c));
    }
}

fn run_row(id: i64, name: &str, status: RunStatus, best: Option<f64>) -> RunRow {
    RunRow {
        id,
        experiment_id: None,
        name: name.into(),
        status,
        config: format!("name = \"{name}\"\n[train]\nlr = 0.00{id}\n"),
        overrides: "[]".into(),
        device: Some("cpu".into()),
        epochs_total: 3,
        epochs_done: 1,
        monitor: Monitor::ValAccuracy,
        best_metric: best,
        best_epoch: best.map(|_| 1),
        final_metrics: None,
        error: None,
        run_dir: None,
        classes: None,
        worker: None,
        pid: None,
        sweep_id: None,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        started_at: None,
        finished_at: None,
        heartbeat_at: None,
        token: None,
        attempt: 0,
        lease_s: None,
        beat_s: None,
        beat_age_s: None,
        provenance: None,
        slurm_job: None,
        cancel_requested: 0,
    }
}

fn checkpoint_row(id: i64, run_id: i64, kind: CheckpointKind) -> CheckpointRow {
    CheckpointRow {
        id,
        run_id,
        epoch: 1,
        kind,
        path: format!("runs/{run_id}/{kind}.bpk"),
        metrics:
            r#"{"train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}"#
                .into(),
        sha256: "00".repeat(32),
        created_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

/// An app over a snapshot made by hand: five runs (two "alpha", three "beta"), two checkpoints,
/// and two experiment files, the first invalid.
fn hand_built() -> App {
    let mut app = App::new(PathBuf::from("experiments"));
    let runs = vec![
        run_row(5, "beta", RunStatus::Running, None),
        run_row(4, "alpha", RunStatus::Completed, Some(0.9)),
        run_row(3, "beta", RunStatus::Failed, Some(0.4)),
        run_row(2, "alpha", RunStatus::Cancelled, Some(0.6)),
        run_row(1, "beta", RunStatus::Completed, Some(0.7)),
    ];
    let snapshot = Snapshot {
        runs,
        checkpoints: vec![
            checkpoint_row(10, 4, CheckpointKind::Best),
            checkpoint_row(11, 1, CheckpointKind::Best),
        ],
        ..Snapshot::default()
    };
    app.handle_msg(Msg::Snapshot(Box::new(snapshot)));
    let entry = |file: &str, name: &str, error: Option<&str>| ExperimentEntry {
        path: PathBuf::from("experiments").join(file),
        name: name.into(),
        text: String::new(),
        error: error.map(String::from),
    };
    app.handle_msg(Msg::Experiments(vec![
        entry("broken.toml", "broken", Some("line 3, column 10: bad")),
        entry("tiny.toml", "tiny", None),
    ]));
    app
}

#[test]
fn keys_return_actions_and_change_no_registry() {
    let mut app = hand_built();
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        None,
        "an invalid file starts nothing"
    );
    assert!(
        app.status.contains("invalid") && app.status.contains("line 3"),
        "{}",
        app.status
    );
    press(&mut app, KeyCode::Down);
    let tiny = Command::StartRun {
        path: PathBuf::from("experiments/tiny.toml"),
        name: "tiny".into(),
    };
    assert_eq!(press(&mut app, KeyCode::Enter), Some(tiny.clone()));
    assert_eq!(press(&mut app, KeyCode::Char('r')), Some(tiny));
    assert!(matches!(
        press(&mut app, KeyCode::Char('S')),
        Some(Command::StartSweep { name, .. }) if name == "tiny"
    ));

    // Runs, newest first: 5 (running elsewhere), 4, 3, ...
    press(&mut app, KeyCode::Char('2'));
    assert_eq!(app.data.focused_run(), Some(5));
    // Held by a worker elsewhere (a `mvlab worker`, a Slurm task): cancelled through it.
    assert_eq!(
        press(&mut app, KeyCode::Char('c')),
        Some(Command::Cancel(5))
    );
    assert!(
        app.status.contains("asking run 5's worker"),
        "{}",
        app.status
    );
    app.data.running.insert(5);
    assert_eq!(
        press(&mut app, KeyCode::Char('c')),
        Some(Command::Cancel(5))
    );
    assert_eq!(press(&mut app, KeyCode::Char('R')), None);
    assert!(app.status.contains("already running"), "{}", app.status);
    assert_eq!(press(&mut app, KeyCode::Char('d')), None);
    assert_eq!(app.modal, Some(Modal::ConfirmDelete(5)));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        None,
        "a running run is not deleted"
    );
    press(&mut app, KeyCode::Down);
    assert_eq!(
        press(&mut app, KeyCode::Char('R')),
        Some(Command::Resume(4))
    );
    assert_eq!(press(&mut app, KeyCode::Char('c')), None);
    assert!(
        app.status.contains("run 4 is not running"),
        "{}",
        app.status
    );
    press(&mut app, KeyCode::Char('d'));
    assert_eq!(press(&mut app, KeyCode::Char('n')), None);
    press(&mut app, KeyCode::Char('d'));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::Delete(4))
    );
    press(&mut app, KeyCode::Enter);
    assert_eq!((app.tab, app.data.focused_run()), (Tab::Run, Some(4)));
    assert_eq!(
        press(&mut app, KeyCode::Char('R')),
        Some(Command::Resume(4))
    );
    // The Run view deletes its run too (asking first).
    press(&mut app, KeyCode::Char('d'));
    assert_eq!(app.modal, Some(Modal::ConfirmDelete(4)));
    assert_eq!(press(&mut app, KeyCode::Esc), None);

    // Marking runs for Compare and checkpoints for evaluation is state only.
    press(&mut app, KeyCode::Char('2'));
    press(&mut app, KeyCode::Char(' '));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char(' '));
    assert_eq!(
        app.data.marked_runs.iter().copied().collect::<Vec<_>>(),
        [3, 4]
    );
    press(&mut app, KeyCode::Char('5'));
    assert_eq!(press(&mut app, KeyCode::Char('e')), None, "needs two marks");
    press(&mut app, KeyCode::Char(' '));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char(' '));
    match press(&mut app, KeyCode::Char('e')) {
        Some(Command::CompareCheckpoints(a, b)) => assert_eq!((a.id, b.id), (10, 11)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(app.data.comparison, Pending::Running));

    // An Escape that arrives glued to the next key (Alt+key, as GNU screen passes it on) is
    // both: the help closes and the key is acted on.
    press(&mut app, KeyCode::Char('?'));
    assert_eq!(app.modal, Some(Modal::Help));
    app.handle_key(KeyEvent::new(KeyCode::Char('2'), KeyModifiers::ALT));
    assert_eq!((app.modal.clone(), app.tab), (None, Tab::Runs));

    // Quitting asks first while this session trains.
    assert_eq!(press(&mut app, KeyCode::Char('q')), None);
    assert_eq!(app.modal, Some(Modal::ConfirmQuit));
    assert_eq!(press(&mut app, KeyCode::Char('y')), Some(Command::StopAll));
    assert!(app.quit);
    app.quit = false;
    app.data.running.clear();
    assert_eq!(press(&mut app, KeyCode::Char('q')), Some(Command::StopAll));
    assert!(app.quit);
}

#[test]
fn with_a_filter_on_the_selection_stays_among_the_visible_runs() {
    let mut app = hand_built();
    press(&mut app, KeyCode::Char('2'));
    press(&mut app, KeyCode::Char('/'));
    for c in "alpha".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    assert!(screen(&app).contains("runs (2 shown"), "{}", screen(&app));
    assert_eq!(
        app.data.focused_run(),
        Some(4),
        "the focus moves to a run the filter shows"
    );
    for _ in 0..5 {
        press(&mut app, KeyCode::Down);
    }
    assert_eq!(
        app.data.focused_run(),
        Some(2),
        "the last visible run stays selected"
    );
    let mouse_down = MouseEvent {
        kind: MouseEventKind::ScrollDown,
        column: 10,
        row: 5,
        modifiers: KeyModifiers::NONE,
    };
    app.handle_mouse(mouse_down, Rect::new(0, 0, 80, 24));
    assert_eq!(app.data.focused_run(), Some(2));
}

#[test]
fn a_click_selects_the_tab_drawn_under_it() {
    let mut app = hand_built();
    let area = Rect::new(0, 0, 80, 24);
    let top = screen(&app);
    let bar: Vec<char> = top.lines().next().unwrap().chars().collect();
    let labels = app.views.labels();
    assert_eq!(labels.len(), Tab::ALL.len());
    for (&tab, label) in Tab::ALL.iter().zip(&labels) {
        let text: Vec<char> = label.chars().collect();
        let start = (0..bar.len())
            .find(|&i| bar[i..].starts_with(&text))
            .unwrap_or_else(|| panic!("{label} drawn in {bar:?}"));
        for column in [start, start + text.len() - 1] {
            let click = MouseEvent {
                kind: MouseEventKind::Down(MouseButton::Left),
                column: column as u16,
                row: 0,
                modifiers: KeyModifiers::NONE,
            };
            app.tab = Tab::Sweeps;
            app.handle_mouse(click, area);
            if tab == Tab::Sweeps {
                app.tab = Tab::Experiments;
                app.handle_mouse(click, area);
            }
            assert_eq!(app.tab, tab, "click at column {column} on {label}");
        }
    }
}

fn screen(app: &App) -> String {
    screen_sized(app, 80, 24)
}

fn screen_sized(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| mvlab::tui::ui::draw(f, app)).unwrap();
    let buf = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// Two completed tiny runs (lr 0.002 and 0.001) of one experiment file.
fn fixture(epochs: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::common::tiny_dataset(dir.path(), 3, 8, 40);
    let exp_dir = dir.path().join("experiments");
    std::fs::create_dir_all(&exp_dir).unwrap();
    let cfg = crate::common::tiny_config(dir.path(), &root, epochs, "");
    let cfg_path = exp_dir.join("tiny.toml");
    std::fs::rename(&cfg, &cfg_path).unwrap();
    std::fs::write(
        exp_dir.join("broken.toml"),
        "name = \"broken\"\n[train]\nepochs = -1\n",
    )
    .unwrap();
    let reg = Registry::open(&dir.path().join("r.db")).unwrap();
    for lr in ["0.002", "0.001"] {
        let loaded = config::load(&cfg_path, &[format!("train.lr={lr}")]).unwrap();
        let id = jobs::create_run(&reg, &loaded, RunStatus::Running, None).unwrap();
        let lease = jobs::take(&reg, id).unwrap();
        jobs::execute(&reg, &lease, &jobs::ExecuteOptions::default(), |_| {}).unwrap();
    }
    let (tx, rx) = channel();
    let effects = Effects::new(reg.clone(), tx);
    let mut app = App::new(exp_dir.clone());
    app.handle_msg(Msg::Experiments(background::scan_experiments(&exp_dir)));
    app.handle_msg(Msg::Snapshot(Box::new(
        background::snapshot(
            &reg,
            &Wanted {
                runs: vec![1, 2],
                ..Wanted::default()
            },
            &mut background::SeedCache::default(),
        )
        .unwrap(),
    )));
    Fixture {
        _dir: dir,
        app,
        effects,
        rx,
        reg,
        seeds: background::SeedCache::default(),
    }
}

fn refresh(f: &mut Fixture) {
    let s = background::snapshot(&f.reg, &f.app.wanted(), &mut f.seeds).unwrap();
    f.app.handle_msg(Msg::Snapshot(Box::new(s)));
}

/// Feeds background messages to the app until `done` holds.
fn pump(f: &mut Fixture, timeout: Duration, done: impl Fn(&App) -> bool) {
    let start = Instant::now();
    while !done(&f.app) {
        assert!(
            start.elapsed() < timeout,
            "timed out; status: {}",
            f.app.status
        );
        if let Ok(msg) = f.rx.recv_timeout(Duration::from_millis(50)) {
            f.app.handle_msg(msg);
        }
        f.effects.reap();
    }
}

#[test]
fn every_view_renders_at_80x24() {
    let mut f = fixture(2);
    let s = screen(&f.app);
    assert!(
        s.contains("1 Experiments")
            && s.contains("✓ tiny")
            && s.contains("broken.toml (Enter: run"),
        "{s}"
    );
    assert!(s.contains("✗ broken"), "invalid files are listed: {s}");
    assert!(
        s.contains("invalid") && s.contains("line 3"),
        "the error is shown with its location: {s}"
    );
    key(&mut f, KeyCode::Down);
    assert!(screen(&f.app).contains("flavour = \"paper\""));

    key(&mut f, KeyCode::Char('2'));
    let s = screen(&f.app);
    assert!(
        s.contains("runs (2 shown") && s.contains("completed") && s.contains("2/2"),
        "{s}"
    );

    key(&mut f, KeyCode::Enter);
    assert_eq!(f.app.tab, Tab::Run);
    let s = screen(&f.app);
    assert!(
        s.contains("run 2 tiny [completed]") && s.contains("loss") && s.contains("accuracy"),
        "{s}"
    );
    assert!(
        s.chars().any(|c| ('\u{2800}'..='\u{28FF}').contains(&c)),
        "braille chart: {s}"
    );

    key(&mut f, KeyCode::Char('2'));
    key(&mut f, KeyCode::Char(' '));
    key(&mut f, KeyCode::Down);
    key(&mut f, KeyCode::Char(' '));
    key(&mut f, KeyCode::Char('4'));
    let s = screen(&f.app);
    assert!(
        s.contains("val accuracy") && s.contains("run 1") && s.contains("run 2"),
        "{s}"
    );
    assert!(
        s.contains("train.lr") && s.contains("0.002") && s.contains("0.001"),
        "differing hyperparameters: {s}"
    );

    key(&mut f, KeyCode::Char('5'));
    let s = screen(&f.app);
    assert!(
        s.contains("best") && s.contains("last") && s.contains("checkpoints"),
        "{s}"
    );

    key(&mut f, KeyCode::Char('?'));
    assert!(screen(&f.app).contains("this help"));
    key(&mut f, KeyCode::Esc);
    assert_eq!(f.app.modal, None);
}

#[test]
fn runs_filter_sort_delete() {
    let mut f = fixture(1);
    keys(&mut f, "2/");
    keys(&mut f, "zzz");
    key(&mut f, KeyCode::Enter);
    assert!(screen(&f.app).contains("runs (0 shown"));
    key(&mut f, KeyCode::Char('/'));
    for _ in 0..3 {
        key(&mut f, KeyCode::Backspace);
    }
    key(&mut f, KeyCode::Enter);
    assert!(screen(&f.app).contains("runs (2 shown"));
    keys(&mut f, "s");
    assert!(screen(&f.app).contains("sorted by best"));
    // Delete asks first; 'n' keeps, 'y' deletes from the registry.
    let id = f.app.data.focused_run().unwrap();
    keys(&mut f, "d");
    assert_eq!(f.app.modal, Some(Modal::ConfirmDelete(id)));
    assert!(screen(&f.app).contains(&format!("Delete run {id}")));
    keys(&mut f, "n");
    assert!(f.reg.run(id).is_ok());
    let folder = jobs::run_folder(&f.reg, id);
    assert!(folder.dir().exists());
    keys(&mut f, "dy");
    pump(&mut f, Duration::from_secs(30), |a| {
        a.status.contains("deleted run")
    });
    assert!(f.reg.run(id).is_err());
    assert!(!folder.dir().exists(), "its files go too");
    refresh(&mut f);
    assert!(screen(&f.app).contains("runs (1 shown"));
}

#[test]
fn start_a_run_from_experiments_and_compare_checkpoints() {
    let mut f = fixture(1);
    key(&mut f, KeyCode::Char('1'));
    key(&mut f, KeyCode::Enter); // tiny.toml is listed second (broken.toml first)
    assert!(f.app.status.contains("invalid"), "{}", f.app.status);
    key(&mut f, KeyCode::Down);
    key(&mut f, KeyCode::Enter);
    pump(&mut f, Duration::from_secs(30), |a| {
        !a.data.running.is_empty()
    });
    assert_eq!(f.app.tab, Tab::Run);
    assert_eq!(f.app.data.focused_run(), Some(3));
    pump(&mut f, Duration::from_secs(120), |a| {
        a.data.running.is_empty()
    });
    assert!(f.app.status.contains("run 3 completed"), "{}", f.app.status);
    assert_eq!(f.reg.run(3).unwrap().status, RunStatus::Completed);

    refresh(&mut f);
    key(&mut f, KeyCode::Char('5'));
    key(&mut f, KeyCode::Char(' '));
    key(&mut f, KeyCode::Down);
    key(&mut f, KeyCode::Down);
    key(&mut f, KeyCode::Char(' '));
    key(&mut f, KeyCode::Char('e'));
    assert!(screen(&f.app).contains("evaluating"));
    pump(&mut f, Duration::from_secs(60), |a| {
        matches!(a.data.comparison, Pending::Done(_))
    });
    let s = screen(&f.app);
    assert!(s.contains("McNemar p") && s.contains("disc"), "{s}");
    assert!(s.contains("flipped images"), "{s}");

    // The run's likeliest mislabelled training images, each drawn with half-blocks.
    key(&mut f, KeyCode::Char('7'));
    assert!(screen(&f.app).contains("dynamics"), "{}", screen(&f.app));
    pump(&mut f, Duration::from_secs(60), |a| {
        matches!(a.data.samples, Some((_, Pending::Done(_))))
    });
    let s = screen(&f.app);
    assert!(
        s.contains("likeliest mislabelled") && s.contains("prefers"),
        "{s}"
    );
    assert!(s.contains('▀') || s.contains('▄'), "no image drawn: {s}");
    key(&mut f, KeyCode::Char('f'));
    assert!(screen(&f.app).contains("forgotten most often"));
    // The Logs view's own read, made by the refresher from the real registry.
    key(&mut f, KeyCode::Char('8'));
    refresh(&mut f);
    let s = screen(&f.app);
    assert!(s.contains("log: ") && s.contains("epoch 1"), "{s}");
}

#[test]
fn a_seed_group_is_drawn_as_a_band_and_marked_at_once() {
    let mut app = App::new(PathBuf::from("experiments"));
    let mut runs = Vec::new();
    let mut details = std::collections::BTreeMap::new();
    for (id, shift) in [(1, 0.0), (2, 0.1), (3, -0.1)] {
        let mut r = run_row(id, "seeded", RunStatus::Completed, Some(0.8));
        r.sweep_id = Some(7);
        runs.push(r);
        let curve: Vec<(f64, f64)> = (1..=5)
            .map(|e| (e as f64, 0.5 + 0.08 * e as f64 + shift))
            .collect();
        details.insert(
            id,
            RunDetail {
                val_acc: curve.clone(),
                val_loss: curve.iter().map(|&(e, a)| (e, 1.0 - a)).collect(),
                ..Default::default()
            },
        );
    }
    runs.push(run_row(4, "alone", RunStatus::Completed, Some(0.9)));
    details.insert(
        4,
        mvlab::tui::state::RunDetail {
            val_acc: (1..=5).map(|e| (e as f64, 0.9)).collect(),
            val_loss: (1..=5).map(|e| (e as f64, 0.1)).collect(),
            ..Default::default()
        },
    );
    let sweep = seed_group_row(7);
    app.handle_msg(Msg::Snapshot(Box::new(Snapshot {
        runs,
        details,
        sweeps: vec![sweep],
        ..Snapshot::default()
    })));
    press(&mut app, KeyCode::Char('2'));
    // Newest first: run 4, then 3 (in group 7); g marks the whole group.
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char('g'));
    assert_eq!(
        app.data.marked_runs.iter().copied().collect::<Vec<_>>(),
        [1, 2, 3]
    );
    press(&mut app, KeyCode::Up);
    press(&mut app, KeyCode::Char(' '));
    press(&mut app, KeyCode::Char('4'));
    let s = screen(&app);
    assert!(s.contains("±1 std band"), "{s}");
    assert!(s.contains("g7 mean±std") && s.contains("run 4"), "{s}");
    // The band's mean is the mean of the three curves.
    let (groups, singles) = mvlab::tui::views::compare::marked_groups(&app.data, &[1, 2, 3, 4]);
    assert_eq!(groups, [(7, vec![1, 2, 3])]);
    assert_eq!(singles, [4]);
    let d = &app.data.snapshot.details;
    let curves: Vec<&[(f64, f64)]> = [1, 2, 3].iter().map(|i| d[i].val_acc.as_slice()).collect();
    let b = mvlab::tui::widgets::band(&curves);
    assert_eq!(b.mean.len(), 5);
    assert!((b.mean[0].1 - 0.58).abs() < 1e-12, "{:?}", b.mean);
    // Sample std of (0.58, 0.68, 0.48) is 0.1: the fill spans mean ± 0.1.
    let at1: Vec<f64> = b.fill.iter().filter(|p| p.0 == 1.0).map(|p| p.1).collect();
    let (lo, hi) = at1
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &y| (l.min(y), h.max(y)));
    assert!(
        (lo - 0.48).abs() < 1e-9 && (hi - 0.68).abs() < 1e-9,
        "{lo} {hi}"
    );
    // A run of the group, shown in Run, is drawn against its group.
    press(&mut app, KeyCode::Char('2'));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Enter);
    assert!(screen(&app).contains("g7 val±std"), "{}", screen(&app));
}

#[test]
fn quitting_with_a_run_in_progress_asks_and_leaves_it_resumable() {
    let mut f = fixture(1);
    // A longer run so that it is still training when we quit.
    let cfg = f
        .app
        .data
        .experiments
        .iter()
        .find(|e| e.name == "tiny")
        .unwrap()
        .path
        .clone();
    let loaded = config::load(&cfg, &["train.epochs=50".into()]).unwrap();
    let id = jobs::create_run(&f.reg, &loaded, RunStatus::Queued, None).unwrap();
    f.effects.perform(Command::Resume(id));
    pump(&mut f, Duration::from_secs(60), |a| {
        a.data.live.get(&id).is_some_and(|l| l.batch > 0)
    });
    key(&mut f, KeyCode::Char('q'));
    assert_eq!(f.app.modal, Some(Modal::ConfirmQuit));
    assert!(!f.app.quit);
    keys(&mut f, "y");
    assert!(f.app.quit);
    assert_eq!(f.reg.run(id).unwrap().status, RunStatus::Cancelled);
    jobs::check_resumable(&f.reg, id).unwrap();
    assert!(jobs::run_folder(&f.reg, id).dir().exists());
}

/// Writes experiment `name` (the tiny one renamed, `edit` applied, `sweep` appended) beside
/// the tiny one, starts its sweep with `S` in Experiments and waits until it is being worked.
fn start_sweep(f: &mut Fixture, name: &str, edit: impl Fn(String) -> String, sweep: &str) {
    let tiny = f
        .app
        .data
        .experiments
        .iter()
        .find(|e| e.name == "tiny")
        .unwrap()
        .path
        .clone();
    let text = std::fs::read_to_string(&tiny)
        .unwrap()
        .replace("name = \"tiny\"", &format!("name = \"{name}\""));
    let sweep_file = tiny.with_file_name(format!("{name}.toml"));
    std::fs::write(&sweep_file, format!("{}{sweep}", edit(text))).unwrap();
    f.app
        .handle_msg(Msg::Experiments(background::scan_experiments(
            sweep_file.parent().unwrap(),
        )));
    let idx = f
        .app
        .data
        .experiments
        .iter()
        .position(|e| e.name == name)
        .unwrap();
    key(f, KeyCode::Char('1'));
    for _ in 0..idx {
        key(f, KeyCode::Down);
    }
    key(f, KeyCode::Char('S'));
    pump(f, Duration::from_secs(30), |a| !a.data.sweeping.is_empty());
}

#[test]
fn a_sweep_started_from_experiments_is_worked_and_ranked() {
    let mut f = fixture(1);
    start_sweep(
        &mut f,
        "swept",
        |t| t,
        "[sweep]\n[sweep.parameters]\n\"train.seed\" = [7, 8]\n",
    );
    assert_eq!(f.app.tab, Tab::Sweeps, "{}", f.app.status);
    pump(&mut f, Duration::from_secs(120), |a| {
        a.data.sweeping.is_empty()
    });
    assert!(f.app.status.contains("2 runs worked"), "{}", f.app.status);
    refresh(&mut f); // lists the sweep; the app then asks for its report
    refresh(&mut f);
    let s = screen(&f.app);
    assert!(
        s.contains("6 Sweeps") && s.contains("swept") && s.contains("train.seed=7"),
        "{s}"
    );
}

#[test]
fn runs_show_their_seed_group_and_seed_and_g_marks_the_group() {
    let mut app = App::new(PathBuf::from("experiments"));
    let mut runs = Vec::new();
    let mut seeds = std::collections::HashMap::new();
    for (id, seed) in [(1, 42), (2, 43), (3, 44)] {
        let mut r = run_row(id, "seeded", RunStatus::Completed, Some(0.8));
        r.sweep_id = Some(7);
        runs.push(r);
        seeds.insert(id, seed);
    }
    runs.push(run_row(4, "alone", RunStatus::Completed, Some(0.9)));
    seeds.insert(4, 42);
    runs.reverse();
    let sweep = seed_group_row(7);
    app.handle_msg(Msg::Snapshot(Box::new(Snapshot {
        runs,
        seeds,
        sweeps: vec![sweep],
        ..Snapshot::default()
    })));
    press(&mut app, KeyCode::Char('2'));
    let s = screen(&app);
    let row = |id: i64| {
        s.lines()
            .find(|l| {
                l.trim_start_matches('│')
                    .trim_start()
                    .starts_with(&format!("{id} "))
            })
            .unwrap_or_else(|| panic!("no row for run {id}: {s}"))
            .to_string()
    };
    assert!(s.contains("group") && s.contains("seed"), "{s}");
    let r2 = row(2);
    assert!(r2.contains("g7") && r2.contains("43"), "{r2}");
    assert!(
        row(4).contains(" - ") && row(4).contains("42"),
        "{}",
        row(4)
    );
    // g on a run of the group marks all three; the group's cell says so.
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char('g'));
    assert!(
        app.status.contains("seed group g7 (runs 1, 2, 3) marked"),
        "{}",
        app.status
    );
    let s = screen(&app);
    for line in s.lines().filter(|l| l.contains("seeded")) {
        assert!(line.contains("g7*"), "{line}");
    }
    press(&mut app, KeyCode::Char('g'));
    assert!(app.data.marked_runs.is_empty());
    assert!(!screen(&app).contains("g7*"));
}

#[test]
fn the_logs_view_follows_the_focused_run_and_filters_by_level() {
    use mvlab::registry::LogRow;
    use mvlab::status::LogLevel;
    let mut app = App::new(PathBuf::from("experiments"));
    let line = |i: usize, level: LogLevel| LogRow {
        time: format!("2026-01-01T10:{:02}:{:02}.000Z", i / 60, i % 60),
        level,
        message: format!("line {i}"),
    };
    let mut rows: Vec<LogRow> = (0..100)
        .map(|i| {
            line(
                i,
                if i % 10 == 3 {
                    LogLevel::Warn
                } else {
                    LogLevel::Info
                },
            )
        })
        .collect();
    let snapshot = |rows: &Vec<LogRow>| Snapshot {
        runs: vec![run_row(1, "logged", RunStatus::Running, None)],
        read: std::collections::HashMap::from([(
            "Logs",
            std::sync::Arc::new((1i64, rows.clone()))
                as std::sync::Arc<dyn std::any::Any + Send + Sync>,
        )]),
        ..Snapshot::default()
    };
    app.handle_msg(Msg::Snapshot(Box::new(snapshot(&rows))));
    let reads = |app: &App| app.wanted().reads.iter().map(|r| r.0).collect::<Vec<_>>();
    assert!(
        reads(&app).is_empty(),
        "not read while another view is shown"
    );
    press(&mut app, KeyCode::Char('8'));
    assert_eq!(app.tab, Tab::Logs);
    assert_eq!(reads(&app), ["Logs"], "the focused run's log is read");
    let s = screen(&app);
    assert!(
        s.contains("line 99") && !s.contains("line 50 "),
        "follows the end: {s}"
    );
    assert!(
        s.contains("100 lines") && s.contains("following the end"),
        "{s}"
    );
    // New lines arrive: still at the end.
    rows.push(line(100, LogLevel::Error));
    app.handle_msg(Msg::Snapshot(Box::new(snapshot(&rows))));
    assert!(screen(&app).contains("line 100"));
    // Scrolling up stops following, and new lines do not move what is shown.
    for _ in 0..30 {
        press(&mut app, KeyCode::Up);
    }
    let s = screen(&app);
    assert!(s.contains("line 70") && !s.contains("line 100"), "{s}");
    rows.push(line(101, LogLevel::Info));
    app.handle_msg(Msg::Snapshot(Box::new(snapshot(&rows))));
    assert!(screen(&app).contains("line 70"));
    press(&mut app, KeyCode::End);
    assert!(screen(&app).contains("line 101"));
    // l: warnings and above, then errors only, then everything.
    press(&mut app, KeyCode::Char('l'));
    let s = screen(&app);
    assert!(
        s.contains("warn and above") && s.contains("line 93") && !s.contains("line 94"),
        "{s}"
    );
    press(&mut app, KeyCode::Char('l'));
    let s = screen(&app);
    assert!(
        s.contains("error and above") && s.contains("line 100") && !s.contains("line 93"),
        "{s}"
    );
    press(&mut app, KeyCode::Char('l'));
    assert!(screen(&app).contains("all levels"));
    press(&mut app, KeyCode::Char('?'));
    assert!(screen(&app).contains("Logs:"), "{}", screen(&app));
}

#[test]
fn a_multi_objective_sweep_plots_its_front_and_shows_the_picked_trial() {
    let mut f = fixture(1);
    start_sweep(
        &mut f,
        "mobile",
        |t| {
            t.replace(
                "image_size = 32\nresize_bigger = 36",
                "image_size = 64\nresize_bigger = 72",
            )
        },
        "[sweep]\nmethod = \"tpe\"\nsamples = 3\nstartup_trials = 2\n\
         objectives = [\"val_accuracy:max\", \"int8_latency_ms:min\"]\n\
         [sweep.parameters]\n\"model.variant\" = [\"xxs\", \"s\"]\n\
         \"train.lr\" = { distribution = \"log_uniform\", min = 1e-3, max = 1e-2 }\n",
    );
    pump(&mut f, Duration::from_secs(300), |a| {
        a.data.sweeping.is_empty()
    });
    assert!(f.app.status.contains("3 runs worked"), "{}", f.app.status);
    for _ in 0..3 {
        refresh(&mut f);
    }
    let s = screen_sized(&f.app, 140, 44);
    assert!(
        s.contains("val_accuracy:max vs int8_latency_ms:min (3 trials)"),
        "{s}"
    );
    assert!(s.contains("(1 of ") && s.contains("model.variant="), "{s}");
    assert!(
        s.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c)),
        "the trials are plotted: {s}"
    );
    let front = mvlab::sweep::report(&f.reg, 1, None).unwrap().front;
    let on_front: Vec<i64> = front.pareto().map(|t| t.run).collect();
    assert!(
        s.contains(&format!("run {} (1 of {}", on_front[0], on_front.len())),
        "{s}"
    );
    key(&mut f, KeyCode::Char(']'));
    let s = screen_sized(&f.app, 140, 44);
    let second = on_front.get(1).unwrap_or(&on_front[0]);
    assert!(s.contains(&format!("run {second} (")), "{s}");
}
