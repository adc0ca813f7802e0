//! `mvlab` with no arguments: the interactive workbench. The UI thread only reads state and
//! draws; training, registry reads and folder watching report through one channel.

pub mod app;
pub mod background;
pub mod ui;

use crate::registry::Registry;
use anyhow::Result;
use app::App;
use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, Event};
use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn run(db: &Path) -> Result<()> {
    let reg = Registry::open(db)?;
    let (tx, rx) = channel();
    let interest = Arc::new(Mutex::new(background::Wanted::default()));
    let experiments_dir = std::env::current_dir()?.join("experiments");
    let mut app = App::new(
        reg.clone(),
        tx.clone(),
        interest.clone(),
        experiments_dir.clone(),
    );
    background::spawn_refresher(reg, interest, tx.clone());
    let _watcher = background::spawn_watcher(experiments_dir, tx);

    // ratatui::init restores the terminal on panic as well as on return.
    let mut terminal = ratatui::init();
    crossterm::execute!(std::io::stdout(), EnableMouseCapture)?;
    let result = (|| -> Result<()> {
        while !app.quit {
            terminal.draw(|f| ui::draw(f, &app))?;
            if event::poll(Duration::from_millis(100))? {
                match event::read()? {
                    Event::Key(k) if k.kind == event::KeyEventKind::Press => app.handle_key(k),
                    Event::Mouse(m) => app.handle_mouse(m),
                    _ => {} // resize: the next draw uses the new size
                }
            }
            while let Ok(msg) = rx.try_recv() {
                app.handle_msg(msg);
            }
        }
        Ok(())
    })();
    let _ = crossterm::execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    app.stop_all_jobs();
    result
}
