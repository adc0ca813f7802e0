//! `mvlab` with no arguments: the interactive workbench. Keys become actions in the current
//! view (`views`, one module each), `app` applies them and hands any work to `effects`, whose
//! threads (`background`) report back through one channel, as do the registry refresher and the
//! folder watcher; `ui` draws from the app's state alone, placed by `layout`.

pub mod app;
pub mod background;
pub mod effects;
pub mod layout;
pub mod state;
pub mod terminal;
pub mod ui;
pub mod views;
pub mod widgets;

use crate::registry::Place;
use anyhow::{Context, Result};
use app::App;
use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, Event};
use effects::Effects;
use std::collections::VecDeque;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn run(db: &Place) -> Result<()> {
    // Settled before the screen changes, so that a bad MVLAB_IMAGES is a plain error.
    let env = terminal::Env::current();
    let plan = terminal::plan(&env).map_err(anyhow::Error::msg)?;
    let reg = db.open()?;
    let (tx, rx) = channel();
    let experiments_dir = std::env::current_dir()?.join("experiments");
    let mut app = App::new(experiments_dir.clone());
    let mut effects = Effects::new(reg.clone(), tx.clone());
    let interest = Arc::new(Mutex::new(app.wanted()));
    background::spawn_refresher(reg, interest.clone(), tx.clone());
    let _watcher = background::spawn_watcher(experiments_dir, tx);

    // ratatui restores the terminal on panic as well as on return.
    let mut tty = ratatui::try_init().context(
        "the workbench needs a terminal (stdin and stdout); mvlab --help lists the commands",
    )?;
    tty.draw(|f| ui::draw(f, &app))?;
    // Asked before crossterm reads any event: what the terminal answers is read here, and the
    // keys typed meanwhile come back to be handled first.
    let (choice, typed) = terminal::choose(plan, &env);
    widgets::use_images(choice.images, choice.cell);
    app.handle_msg(background::Msg::Status(format!(
        "{}; press ? for help",
        choice.line()
    )));
    app.images = choice.line();
    crossterm::execute!(std::io::stdout(), EnableMouseCapture)?;
    let mut typed: VecDeque<Event> = typed.into();
    let result = (|| -> Result<()> {
        while !app.quit {
            tty.draw(|f| ui::draw(f, &app))?;
            let event = match typed.pop_front() {
                Some(e) => Some(e),
                None if event::poll(Duration::from_millis(100))? => Some(event::read()?),
                None => None,
            };
            let command = match event {
                Some(Event::Key(k)) if k.kind == event::KeyEventKind::Press => app.handle_key(k),
                Some(Event::Mouse(m)) => {
                    let size = tty.size()?;
                    app.handle_mouse(m, ratatui::layout::Rect::new(0, 0, size.width, size.height))
                }
                _ => None, // resize: the next draw uses the new size
            };
            if let Some(command) = command {
                effects.perform(command);
            }
            while let Ok(msg) = rx.try_recv() {
                app.handle_msg(msg);
            }
            effects.reap();
            *interest.lock().unwrap() = app.wanted();
        }
        Ok(())
    })();
    let _ = crossterm::execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    effects.stop_all();
    result
}
