//! `mvlab` with no arguments: the interactive workbench. Keys become actions in the current
//! view (`views`, one module each), `app` applies them and hands any work to `effects`, whose
//! threads (`background`) report back through one channel, as do the registry refresher and the
//! folder watcher; `ui` draws from the app's state alone, placed by `layout`.

pub mod app;
pub mod background;
pub mod effects;
pub mod layout;
pub mod state;
pub mod ui;
pub mod views;
pub mod widgets;

use crate::registry::Place;
use anyhow::Result;
use app::App;
use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, Event};
use effects::Effects;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn run(db: &Place) -> Result<()> {
    let reg = db.open()?;
    let (tx, rx) = channel();
    let experiments_dir = std::env::current_dir()?.join("experiments");
    let mut app = App::new(experiments_dir.clone());
    let mut effects = Effects::new(reg.clone(), tx.clone());
    let interest = Arc::new(Mutex::new(app.wanted()));
    background::spawn_refresher(reg, interest.clone(), tx.clone());
    let _watcher = background::spawn_watcher(experiments_dir, tx);

    // ratatui::init restores the terminal on panic as well as on return.
    let mut terminal = ratatui::init();
    // Asked once, before any event is read: the terminal answers on stdin.
    let images = widgets::choose_image_protocol();
    app.handle_msg(background::Msg::Status(format!(
        "images drawn with {images}; press ? for help"
    )));
    crossterm::execute!(std::io::stdout(), EnableMouseCapture)?;
    let result = (|| -> Result<()> {
        while !app.quit {
            terminal.draw(|f| ui::draw(f, &app))?;
            if event::poll(Duration::from_millis(100))? {
                let command = match event::read()? {
                    Event::Key(k) if k.kind == event::KeyEventKind::Press => app.handle_key(k),
                    Event::Mouse(m) => {
                        let size = terminal.size()?;
                        app.handle_mouse(
                            m,
                            ratatui::layout::Rect::new(0, 0, size.width, size.height),
                        )
                    }
                    _ => None, // resize: the next draw uses the new size
                };
                if let Some(command) = command {
                    effects.perform(command);
                }
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
