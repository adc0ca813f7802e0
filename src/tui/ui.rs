//! Drawing the frame: tab bar, the current view (drawn by its module in `views`), status line
//! and dialogs; a function of the [`App`] alone.

use super::app::{App, Modal};
use super::layout::{self, TABS};
use super::views;
use super::widgets::centered;
use ratatui::prelude::*;
use ratatui::widgets::{Block, Clear, Paragraph, Tabs, Wrap};

pub fn draw(f: &mut Frame, app: &App) {
    let [top, body, bottom] = layout::screen(f.area());
    let selected = TABS.iter().position(|t| t.0 == app.tab).unwrap_or(0);
    let tabs = Tabs::new(TABS.iter().map(|t| t.1))
        .select(selected)
        .padding(layout::TAB_PADDING, layout::TAB_PADDING)
        .divider(layout::TAB_DIVIDER)
        .highlight_style(Style::new().reversed());
    f.render_widget(tabs, top);
    app.views.draw(app.tab, f, body, &app.data);
    let running = app.data.running.len() + app.data.sweeping.len();
    let status = app.views.editing_line(app.tab).unwrap_or_else(|| {
        let training = if running > 0 {
            format!("[{running} training] ")
        } else {
            String::new()
        };
        format!("{training}{}", app.status)
    });
    f.render_widget(Paragraph::new(status).style(Style::new().dim()), bottom);
    if let Some(m) = &app.modal {
        modal(f, m);
    }
}

const GLOBAL_HELP: &str = "1-7 / Tab   switch view          q        quit
↑↓ / j k    move                 ?        this help";

fn modal(f: &mut Frame, m: &Modal) {
    let (title, text) = match m {
        Modal::Help => (
            "help",
            format!(
                "{GLOBAL_HELP}\n{}\nExperiment files in experiments/ are watched live.",
                views::HELP.join("\n")
            ),
        ),
        Modal::ConfirmDelete(id) => (
            "delete",
            format!("Delete run {id}, its metrics and checkpoint files?\n\n  y: delete   n: keep"),
        ),
        Modal::ConfirmQuit => (
            "quit",
            "Runs are training. Quit anyway?\nThey stop after their current step: single runs are\nmarked cancelled (R resumes them), sweep runs go back\nto the queue for any worker.\n\n  y: quit   n: stay".to_string(),
        ),
    };
    let area = centered(f.area(), 76, (text.lines().count() + 2) as u16);
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(text)
            .block(Block::bordered().title(title))
            .wrap(Wrap { trim: false }),
        area,
    );
}
