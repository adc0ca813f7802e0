//! The workbench against a registry filled by real tiny runs: every view rendered with
//! ratatui's TestBackend at 80x24, and the key-driven actions.

mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mvlab::config;
use mvlab::jobs;
use mvlab::registry::Registry;
use mvlab::train::Control;
use mvlab::tui::app::{App, Modal, Tab};
use mvlab::tui::background::{self, Msg};
use ratatui::{Terminal, backend::TestBackend};
use std::path::Path;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Fixture {
    _dir: tempfile::TempDir,
    app: App,
    rx: Receiver<Msg>,
    reg: Registry,
}

fn key(app: &mut App, code: KeyCode) {
    app.handle_key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn keys(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn screen(app: &App) -> String {
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
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
    let root = common::tiny_dataset(dir.path(), 3, 8, 40);
    let exp_dir = dir.path().join("experiments");
    std::fs::create_dir_all(&exp_dir).unwrap();
    let cfg = common::tiny_config(dir.path(), &root, epochs, "");
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
        let id = jobs::create_run(&reg, &loaded, "running", None).unwrap();
        jobs::execute(&reg, id, false, &Control::default(), |_| {}).unwrap();
    }
    let (tx, rx) = channel();
    let interest = Arc::new(Mutex::new(background::Wanted {
        runs: vec![1, 2],
        sweep: None,
    }));
    let mut app = App::new(reg.clone(), tx, interest, exp_dir.clone());
    app.handle_msg(Msg::Experiments(background::scan_experiments(&exp_dir)));
    app.handle_msg(Msg::Snapshot(Box::new(
        background::snapshot(
            &reg,
            &background::Wanted {
                runs: vec![1, 2],
                sweep: None,
            },
        )
        .unwrap(),
    )));
    Fixture {
        _dir: dir,
        app,
        rx,
        reg,
    }
}

fn refresh(f: &mut Fixture) {
    let wanted = f.app.interest.lock().unwrap().clone();
    let s = background::snapshot(&f.reg, &wanted).unwrap();
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
    }
}

#[test]
fn every_view_renders_at_80x24() {
    let mut f = fixture(2);
    let app = &mut f.app;

    let s = screen(app);
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
    key(app, KeyCode::Down);
    assert!(screen(app).contains("flavour = \"paper\""));

    key(app, KeyCode::Char('2'));
    let s = screen(app);
    assert!(
        s.contains("runs (2 shown") && s.contains("completed") && s.contains("2/2"),
        "{s}"
    );

    key(app, KeyCode::Enter);
    assert_eq!(app.tab, Tab::Detail);
    let s = screen(app);
    assert!(
        s.contains("run 2 tiny [completed]") && s.contains("loss") && s.contains("accuracy"),
        "{s}"
    );
    assert!(
        s.chars().any(|c| ('\u{2800}'..='\u{28FF}').contains(&c)),
        "braille chart: {s}"
    );

    key(app, KeyCode::Char('2'));
    key(app, KeyCode::Char(' '));
    key(app, KeyCode::Down);
    key(app, KeyCode::Char(' '));
    key(app, KeyCode::Char('4'));
    let s = screen(app);
    assert!(
        s.contains("val accuracy") && s.contains("run 1") && s.contains("run 2"),
        "{s}"
    );
    assert!(
        s.contains("train.lr") && s.contains("0.002") && s.contains("0.001"),
        "differing hyperparameters: {s}"
    );

    key(app, KeyCode::Char('5'));
    let s = screen(app);
    assert!(
        s.contains("best") && s.contains("last") && s.contains("checkpoints"),
        "{s}"
    );

    key(app, KeyCode::Char('?'));
    assert!(screen(app).contains("this help"));
    key(app, KeyCode::Esc);
    assert_eq!(app.modal, None);
}

#[test]
fn runs_filter_sort_delete() {
    let mut f = fixture(1);
    let app = &mut f.app;
    keys(app, "2/");
    keys(app, "zzz");
    key(app, KeyCode::Enter);
    assert!(screen(app).contains("runs (0 shown"));
    key(app, KeyCode::Char('/'));
    for _ in 0..3 {
        key(app, KeyCode::Backspace);
    }
    key(app, KeyCode::Enter);
    assert_eq!(app.visible_runs().len(), 2);
    keys(app, "s");
    assert!(screen(app).contains("sorted by best"));
    // Delete asks first; 'n' keeps, 'y' deletes from the registry.
    let id = app.selected_run().unwrap();
    keys(app, "d");
    assert_eq!(app.modal, Some(Modal::ConfirmDelete(id)));
    assert!(screen(app).contains(&format!("Delete run {id}")));
    keys(app, "n");
    assert!(f.reg.run(id).is_ok());
    keys(&mut f.app, "dy");
    assert!(f.reg.run(id).is_err());
    refresh(&mut f);
    assert_eq!(f.app.visible_runs().len(), 1);
}

#[test]
fn start_a_run_from_experiments_and_compare_checkpoints() {
    let mut f = fixture(1);
    key(&mut f.app, KeyCode::Char('1'));
    key(&mut f.app, KeyCode::Enter); // tiny.toml is listed second (broken.toml first)
    assert!(f.app.status.contains("invalid"), "{}", f.app.status);
    key(&mut f.app, KeyCode::Down);
    key(&mut f.app, KeyCode::Enter);
    assert_eq!(f.app.tab, Tab::Detail);
    assert_eq!(f.app.detail_run, Some(3));
    pump(&mut f, Duration::from_secs(120), |a| a.jobs.is_empty());
    assert!(f.app.status.contains("run 3 completed"), "{}", f.app.status);
    assert_eq!(f.reg.run(3).unwrap().status, "completed");

    refresh(&mut f);
    key(&mut f.app, KeyCode::Char('5'));
    key(&mut f.app, KeyCode::Char(' '));
    key(&mut f.app, KeyCode::Down);
    key(&mut f.app, KeyCode::Down);
    key(&mut f.app, KeyCode::Char(' '));
    key(&mut f.app, KeyCode::Char('e'));
    assert!(screen(&f.app).contains("evaluating"));
    pump(&mut f, Duration::from_secs(60), |a| a.comparison.is_some());
    let s = screen(&f.app);
    assert!(s.contains("they disagree on") && s.contains("disc"), "{s}");
}

#[test]
fn quitting_with_a_run_in_progress_asks_and_leaves_it_resumable() {
    let mut f = fixture(1);
    // A longer run so that it is still training when we quit.
    let cfg = f
        .app
        .experiments
        .iter()
        .find(|e| e.name == "tiny")
        .unwrap()
        .path
        .clone();
    let loaded = config::load(&cfg, &["train.epochs=50".into()]).unwrap();
    let id = jobs::create_run(&f.reg, &loaded, "queued", None).unwrap();
    f.app.resume(id);
    pump(&mut f, Duration::from_secs(60), |a| {
        a.live.get(&id).is_some_and(|l| l.batch > 0)
    });
    key(&mut f.app, KeyCode::Char('q'));
    assert_eq!(f.app.modal, Some(Modal::ConfirmQuit));
    assert!(!f.app.quit);
    keys(&mut f.app, "y");
    assert!(f.app.quit);
    assert_eq!(f.reg.run(id).unwrap().status, "cancelled");
    jobs::check_resumable(&f.reg, id).unwrap();
    assert!(Path::new(&jobs::run_dir(&f.reg, id)).exists());
}

#[test]
fn a_sweep_started_from_experiments_is_worked_and_ranked() {
    let mut f = fixture(1);
    let tiny = f
        .app
        .experiments
        .iter()
        .find(|e| e.name == "tiny")
        .unwrap()
        .path
        .clone();
    let text = std::fs::read_to_string(&tiny)
        .unwrap()
        .replace("name = \"tiny\"", "name = \"swept\"");
    let sweep_file = tiny.with_file_name("swept.toml");
    std::fs::write(
        &sweep_file,
        format!("{text}[sweep]\n[sweep.parameters]\n\"train.seed\" = [7, 8]\n"),
    )
    .unwrap();
    f.app
        .handle_msg(Msg::Experiments(background::scan_experiments(
            sweep_file.parent().unwrap(),
        )));
    let idx = f
        .app
        .experiments
        .iter()
        .position(|e| e.name == "swept")
        .unwrap();
    key(&mut f.app, KeyCode::Char('1'));
    for _ in 0..idx {
        key(&mut f.app, KeyCode::Down);
    }
    key(&mut f.app, KeyCode::Char('S'));
    assert_eq!(f.app.tab, Tab::Sweeps, "{}", f.app.status);
    pump(&mut f, Duration::from_secs(120), |a| {
        a.sweep_workers.is_empty()
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
fn mouse_clicks_switch_tabs_and_the_wheel_moves_the_selection() {
    use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
    let mut f = fixture(1);
    let click = |column| MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column,
        row: 0,
        modifiers: KeyModifiers::NONE,
    };
    // The tab bar reads " 1 Experiments │ 2 Runs │ 3 Run │ ...": "2 Runs" starts at column 18.
    f.app.handle_mouse(click(19));
    assert_eq!(f.app.tab, Tab::Runs);
    let first = f.app.selected_run();
    f.app.handle_mouse(MouseEvent {
        kind: MouseEventKind::ScrollDown,
        column: 10,
        row: 5,
        modifiers: KeyModifiers::NONE,
    });
    assert_ne!(f.app.selected_run(), first);
    f.app.handle_mouse(click(2));
    assert_eq!(f.app.tab, Tab::Experiments);
}
