//! The terminal the workbench runs in: which graphics protocol draws its images, found without
//! losing a key. The environment decides where it can (`MVLAB_IMAGES`; tmux, GNU screen,
//! `TERM=dumb` or no terminal: half-blocks, no query). Elsewhere the terminal is asked once, at
//! start, with a deadline, by reading the tty here before crossterm's reader exists: its
//! answers are taken out of what was read, and keys typed meanwhile go to the event loop first.
//!
//! The query is in two steps so that no answer can arrive after the deadline and be read as
//! keys: first the primary device attributes (`CSI c`, which every terminal answers, and whose
//! attribute 4 is sixel); only a terminal that answered gets the kitty graphics query and the
//! cell-size request, followed by `CSI c` again to mark the end of its answers.

use crossterm::event::{
    Event, KeyCode, KeyEvent, KeyEventKind, KeyEventState, KeyModifiers, MouseButton, MouseEvent,
    MouseEventKind,
};
use std::time::Duration;

/// How images are drawn (`MVLAB_IMAGES` spells them so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::EnumString)]
#[strum(serialize_all = "lowercase")]
pub enum Images {
    Kitty,
    Sixel,
    Iterm2,
    Halfblocks,
    /// No images: a line of text in their place.
    None,
}

/// What `MVLAB_IMAGES` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Ask the terminal unless the environment already tells (the default).
    Auto,
    /// Ask the terminal even inside tmux or screen.
    Query,
    Use(Images),
}

pub const REQUEST_VALUES: &str = "auto, query, kitty, sixel, iterm2, halfblocks, none";

impl std::str::FromStr for Request {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "auto" => Ok(Request::Auto),
            "query" => Ok(Request::Query),
            other => other
                .parse()
                .map(Request::Use)
                .map_err(|_| format!("MVLAB_IMAGES={other}: expected one of {REQUEST_VALUES}")),
        }
    }
}

/// The protocol chosen, the terminal's cell size in pixels, and why, for the status line.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub images: Images,
    pub cell: (u16, u16),
    pub why: String,
}

impl Choice {
    pub fn line(&self) -> String {
        format!("images: {} ({})", self.images, self.why)
    }
}

/// What the choice depends on besides the terminal's answers.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub images: Option<String>,
    pub term: Option<String>,
    pub term_program: Option<String>,
    pub tmux: bool,
    pub screen: bool,
    /// stdin and stdout are both terminals.
    pub tty: bool,
}

impl Env {
    pub fn current() -> Self {
        use std::io::IsTerminal;
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            images: var("MVLAB_IMAGES"),
            term: var("TERM"),
            term_program: var("TERM_PROGRAM"),
            tmux: var("TMUX").is_some(),
            screen: var("STY").is_some(),
            tty: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        }
    }
}

/// What to do at start: use a protocol the environment settles, or ask the terminal.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Use(Images, String),
    Ask,
}

/// Half-blocks when unsure: every terminal draws them.
const FALLBACK: Images = Images::Halfblocks;

/// Decides from the environment alone; an unknown `MVLAB_IMAGES` is an error naming the values.
pub fn plan(env: &Env) -> Result<Plan, String> {
    let request: Request = env.images.as_deref().unwrap_or("").parse()?;
    let term = env.term.as_deref().unwrap_or("");
    Ok(match request {
        Request::Use(images) => Plan::Use(images, format!("MVLAB_IMAGES={images}")),
        _ if !env.tty => Plan::Use(FALLBACK, "not a terminal".into()),
        Request::Query => Plan::Ask,
        _ if env.tmux || term.starts_with("tmux") => Plan::Use(
            FALLBACK,
            "inside tmux, not asked; MVLAB_IMAGES=query asks, =sixel forces".into(),
        ),
        _ if env.screen || term.starts_with("screen") => Plan::Use(
            FALLBACK,
            "inside GNU screen, not asked; MVLAB_IMAGES=query asks".into(),
        ),
        _ if term == "dumb" || term.is_empty() => {
            Plan::Use(FALLBACK, format!("TERM={term}, not asked"))
        }
        Request::Auto => Plan::Ask,
    })
}

/// One answer of the terminal, as found in what was read.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `CSI ? a ; b ; … c`: the primary device attributes.
    Attributes(Vec<u16>),
    /// `APC G … ST`, the kitty graphics answer: whether it said OK.
    Kitty(bool),
    /// `CSI 6 ; height ; width t`: the cell size in pixels.
    CellSize(u16, u16),
}

/// What was read, split: the terminal's answers and every other byte (keys typed meanwhile),
/// in order. What ends inside a possible answer stays in `rest` (a lone Escape is a key).
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    pub answers: Vec<Answer>,
    pub rest: Vec<u8>,
}

/// Where one escape sequence that may be an answer ends, and what it says: `Ok(None)` when it
/// is no answer (a key's sequence: its bytes are kept), `Err(())` when it is cut short.
fn answer_at(b: &[u8]) -> Result<Option<(usize, Answer)>, ()> {
    debug_assert_eq!(b.first(), Some(&0x1b));
    match b.get(1) {
        None => Err(()),
        Some(b'[') => {
            let private = b.get(2) == Some(&b'?');
            let start = if private { 3 } else { 2 };
            let len = b[start..]
                .iter()
                .position(|c| !(c.is_ascii_digit() || *c == b';'))
                .ok_or(())?;
            let params: Vec<u16> = std::str::from_utf8(&b[start..start + len])
                .unwrap_or("")
                .split(';')
                .map(|p| p.parse().unwrap_or(0))
                .collect();
            let end = start + len + 1;
            Ok(match (private, b[start + len], params.as_slice()) {
                (true, b'c', _) => Some((end, Answer::Attributes(params))),
                (false, b't', [6, h, w]) => Some((end, Answer::CellSize(*h, *w))),
                _ => None,
            })
        }
        Some(b'_') if b.get(2) == Some(&b'G') => {
            let close = b.windows(2).position(|w| w == b"\x1b\\").ok_or(())?;
            let body = &b[3..close];
            let ok = body.windows(3).any(|w| w == b";OK");
            Ok(Some((close + 2, Answer::Kitty(ok))))
        }
        Some(b'_') if b.len() == 2 => Err(()),
        Some(_) => Ok(None),
    }
}

/// Splits bytes read from the terminal into its answers and the rest.
pub fn split(bytes: &[u8]) -> Split {
    let mut out = Split::default();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1b {
            match answer_at(&bytes[i..]) {
                Ok(Some((len, answer))) => {
                    out.answers.push(answer);
                    i += len;
                    continue;
                }
                Ok(None) => {}
                Err(()) => {
                    out.rest.extend_from_slice(&bytes[i..]);
                    return out;
                }
            }
        }
        out.rest.push(bytes[i]);
        i += 1;
    }
    out
}

/// The keys (and mouse events) in bytes that are not answers, decoded as crossterm would.
pub fn events(rest: &[u8]) -> Vec<Event> {
    let mut parser = termina::Parser::default();
    parser.parse(rest, false);
    std::iter::from_fn(|| parser.pop())
        .filter_map(crossterm_event)
        .collect()
}

fn crossterm_event(e: termina::Event) -> Option<Event> {
    use termina::event as t;
    let modifiers = |m: t::Modifiers| {
        let mut out = KeyModifiers::NONE;
        for (from, to) in [
            (t::Modifiers::SHIFT, KeyModifiers::SHIFT),
            (t::Modifiers::ALT, KeyModifiers::ALT),
            (t::Modifiers::CONTROL, KeyModifiers::CONTROL),
            (t::Modifiers::SUPER, KeyModifiers::SUPER),
            (t::Modifiers::HYPER, KeyModifiers::HYPER),
            (t::Modifiers::META, KeyModifiers::META),
        ] {
            if m.contains(from) {
                out |= to;
            }
        }
        out
    };
    let button = |b: t::MouseButton| match b {
        t::MouseButton::Left => MouseButton::Left,
        t::MouseButton::Right => MouseButton::Right,
        t::MouseButton::Middle => MouseButton::Middle,
    };
    match e {
        termina::Event::Key(k) => {
            let code = match k.code {
                t::KeyCode::Char(c) => KeyCode::Char(c),
                t::KeyCode::Enter => KeyCode::Enter,
                t::KeyCode::Backspace => KeyCode::Backspace,
                t::KeyCode::Tab => KeyCode::Tab,
                t::KeyCode::BackTab => KeyCode::BackTab,
                t::KeyCode::Escape => KeyCode::Esc,
                t::KeyCode::Left => KeyCode::Left,
                t::KeyCode::Right => KeyCode::Right,
                t::KeyCode::Up => KeyCode::Up,
                t::KeyCode::Down => KeyCode::Down,
                t::KeyCode::Home => KeyCode::Home,
                t::KeyCode::End => KeyCode::End,
                t::KeyCode::PageUp => KeyCode::PageUp,
                t::KeyCode::PageDown => KeyCode::PageDown,
                t::KeyCode::Insert => KeyCode::Insert,
                t::KeyCode::Delete => KeyCode::Delete,
                t::KeyCode::Function(n) => KeyCode::F(n),
                _ => return None,
            };
            let kind = match k.kind {
                t::KeyEventKind::Press => KeyEventKind::Press,
                t::KeyEventKind::Repeat => KeyEventKind::Repeat,
                t::KeyEventKind::Release => KeyEventKind::Release,
            };
            Some(Event::Key(KeyEvent {
                code,
                modifiers: modifiers(k.modifiers),
                kind,
                state: KeyEventState::NONE,
            }))
        }
        termina::Event::Mouse(m) => {
            let kind = match m.kind {
                t::MouseEventKind::Down(b) => MouseEventKind::Down(button(b)),
                t::MouseEventKind::Up(b) => MouseEventKind::Up(button(b)),
                t::MouseEventKind::Drag(b) => MouseEventKind::Drag(button(b)),
                t::MouseEventKind::Moved => MouseEventKind::Moved,
                t::MouseEventKind::ScrollDown => MouseEventKind::ScrollDown,
                t::MouseEventKind::ScrollUp => MouseEventKind::ScrollUp,
                t::MouseEventKind::ScrollLeft => MouseEventKind::ScrollLeft,
                t::MouseEventKind::ScrollRight => MouseEventKind::ScrollRight,
            };
            Some(Event::Mouse(MouseEvent {
                kind,
                column: m.column,
                row: m.row,
                modifiers: modifiers(m.modifiers),
            }))
        }
        _ => None,
    }
}

/// The protocol the answers point to, and why.
pub fn from_answers(answers: &[Answer], env: &Env) -> (Images, String) {
    let kitty = answers.iter().any(|a| *a == Answer::Kitty(true));
    let sixel = answers
        .iter()
        .any(|a| matches!(a, Answer::Attributes(p) if p.contains(&4)));
    // iTerm2's protocol has no query; the terminals that speak it say so in TERM_PROGRAM.
    let iterm2 = env.term_program.as_deref().filter(|p| {
        [
            "iTerm",
            "WezTerm",
            "mintty",
            "vscode",
            "Tabby",
            "rio",
            "WarpTerminal",
        ]
        .iter()
        .any(|name| p.contains(name))
    });
    if kitty {
        (
            Images::Kitty,
            "the terminal answered the kitty graphics query".into(),
        )
    } else if sixel {
        (
            Images::Sixel,
            "the terminal's device attributes include sixel".into(),
        )
    } else if let Some(program) = iterm2 {
        (Images::Iterm2, format!("TERM_PROGRAM={program}"))
    } else {
        (
            FALLBACK,
            "the terminal answered: no kitty graphics, no sixel".into(),
        )
    }
}

/// The cell size in pixels: the terminal's answer, else the window size the tty reports, else
/// a usual one (half-blocks do not need it exact).
fn cell_size(answers: &[Answer]) -> (u16, u16) {
    answers
        .iter()
        .find_map(|a| match a {
            Answer::CellSize(h, w) if *h > 0 && *w > 0 => Some((*w, *h)),
            _ => None,
        })
        .or_else(tty::cell_from_window)
        .unwrap_or((10, 20))
}

/// How long the terminal may take to answer the first query.
pub const DEADLINE: Duration = Duration::from_millis(1000);

/// Carries out the plan: asks the terminal if it says so (in raw mode, before any event is
/// read). Returns the choice and the events typed while asking, in order.
pub fn choose(plan: Plan, env: &Env) -> (Choice, Vec<Event>) {
    match plan {
        Plan::Use(images, why) => (
            Choice {
                images,
                cell: cell_size(&[]),
                why,
            },
            Vec::new(),
        ),
        Plan::Ask => match tty::ask(DEADLINE) {
            Ok(asked) => {
                let split = split(&asked.bytes);
                let (images, why) = if asked.answered {
                    from_answers(&split.answers, env)
                } else {
                    (
                        FALLBACK,
                        format!(
                            "the terminal did not answer its query within {} ms",
                            DEADLINE.as_millis()
                        ),
                    )
                };
                let choice = Choice {
                    images,
                    cell: cell_size(&split.answers),
                    why,
                };
                (choice, events(&split.rest))
            }
            Err(e) => (
                Choice {
                    images: FALLBACK,
                    cell: cell_size(&[]),
                    why: format!("the terminal could not be asked: {e}"),
                },
                Vec::new(),
            ),
        },
    }
}

#[cfg(unix)]
mod tty {
    use super::{Answer, split};
    use std::io::Write;
    use std::time::{Duration, Instant};

    pub struct Asked {
        /// Everything read, answers and keys.
        pub bytes: Vec<u8>,
        /// Whether the terminal answered the first query.
        pub answered: bool,
    }

    fn attributes(bytes: &[u8]) -> usize {
        split(bytes)
            .answers
            .iter()
            .filter(|a| matches!(a, Answer::Attributes(_)))
            .count()
    }

    /// Reads stdin until `done` holds for what was read or the deadline passes.
    fn read_until(
        bytes: &mut Vec<u8>,
        deadline: Instant,
        done: impl Fn(&[u8]) -> bool,
    ) -> std::io::Result<bool> {
        use rustix::event::{PollFd, PollFlags, poll};
        let stdin = std::io::stdin();
        while !done(bytes) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let timeout = rustix::event::Timespec::try_from(left).ok();
            let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
            let ready = match poll(&mut fds, timeout.as_ref()) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if ready == 0 {
                continue;
            }
            // From the descriptor itself: std's buffered stdin could keep bytes crossterm,
            // which reads the descriptor, would then never see.
            let mut buf = [0u8; 256];
            let n = match rustix::io::read(&stdin, &mut buf) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Ok(false);
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        Ok(true)
    }

    /// The two-step query (see the module's comment). The terminal must be in raw mode.
    pub fn ask(deadline: Duration) -> std::io::Result<Asked> {
        let mut out = std::io::stdout();
        let mut bytes = Vec::new();
        let start = Instant::now();
        out.write_all(b"\x1b[c")?;
        out.flush()?;
        if !read_until(&mut bytes, start + deadline, |b| attributes(b) >= 1)? {
            return Ok(Asked {
                bytes,
                answered: false,
            });
        }
        // It answers: the rest comes as fast (allow for a slow link).
        let second = deadline.max(start.elapsed() * 4);
        out.write_all(b"\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\\x1b[16t\x1b[c")?;
        out.flush()?;
        read_until(&mut bytes, Instant::now() + second, |b| attributes(b) >= 2)?;
        Ok(Asked {
            bytes,
            answered: true,
        })
    }

    /// Pixels per cell from the window size the tty reports, when it reports pixels.
    pub fn cell_from_window() -> Option<(u16, u16)> {
        let w = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
        (w.ws_xpixel > 0 && w.ws_ypixel > 0 && w.ws_col > 0 && w.ws_row > 0)
            .then(|| (w.ws_xpixel / w.ws_col, w.ws_ypixel / w.ws_row))
    }
}

#[cfg(not(unix))]
mod tty {
    pub struct Asked {
        pub bytes: Vec<u8>,
        pub answered: bool,
    }
    pub fn ask(_: std::time::Duration) -> std::io::Result<Asked> {
        Err(std::io::Error::other(
            "asking is done on unix terminals only",
        ))
    }
    pub fn cell_from_window() -> Option<(u16, u16)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(term: &str) -> Env {
        Env {
            term: Some(term.into()),
            tty: true,
            ..Env::default()
        }
    }

    #[test]
    fn the_environment_decides_where_it_can() {
        assert_eq!(plan(&env("xterm-256color")), Ok(Plan::Ask));
        let tmux = Env {
            tmux: true,
            ..env("tmux-256color")
        };
        assert!(
            matches!(plan(&tmux), Ok(Plan::Use(Images::Halfblocks, why)) if why.contains("tmux"))
        );
        assert!(matches!(
            plan(&env("screen.xterm-256color")),
            Ok(Plan::Use(Images::Halfblocks, _))
        ));
        assert!(matches!(
            plan(&env("dumb")),
            Ok(Plan::Use(Images::Halfblocks, _))
        ));
        let forced = Env {
            images: Some("query".into()),
            ..tmux.clone()
        };
        assert_eq!(plan(&forced), Ok(Plan::Ask));
        let sixel = Env {
            images: Some("sixel".into()),
            ..tmux
        };
        assert!(matches!(plan(&sixel), Ok(Plan::Use(Images::Sixel, _))));
        let piped = Env {
            tty: false,
            ..env("xterm")
        };
        assert!(
            matches!(plan(&piped), Ok(Plan::Use(Images::Halfblocks, why)) if why.contains("not a terminal"))
        );
        let bad = Env {
            images: Some("sixels".into()),
            ..env("xterm")
        };
        let err = plan(&bad).unwrap_err();
        assert!(
            err.contains("MVLAB_IMAGES=sixels") && err.contains("halfblocks"),
            "{err}"
        );
    }

    #[test]
    fn answers_are_taken_out_and_keys_kept_in_order() {
        // xterm -ti vt340's answers, with keys typed before, between and after them.
        let read = b"2\x1b[?63;1;2;4;6;9;15;16;22;28c?\x1b[6;13;6tq\x1b[A\x1b[?63;1;2;4c";
        let s = split(read);
        assert_eq!(
            s.answers,
            vec![
                Answer::Attributes(vec![63, 1, 2, 4, 6, 9, 15, 16, 22, 28]),
                Answer::CellSize(13, 6),
                Answer::Attributes(vec![63, 1, 2, 4]),
            ]
        );
        assert_eq!(s.rest, b"2?q\x1b[A");
        let keys: Vec<KeyCode> = events(&s.rest)
            .into_iter()
            .filter_map(|e| match e {
                Event::Key(k) => Some(k.code),
                _ => None,
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                KeyCode::Char('2'),
                KeyCode::Char('?'),
                KeyCode::Char('q'),
                KeyCode::Up
            ]
        );
        let (images, _) = from_answers(&s.answers, &env("xterm"));
        assert_eq!(images, Images::Sixel);
    }

    #[test]
    fn kitty_and_cut_short_answers() {
        let s = split(b"\x1b_Gi=31;OK\x1b\\\x1b[?62;22c");
        assert_eq!(s.answers[0], Answer::Kitty(true));
        assert_eq!(
            from_answers(&s.answers, &env("xterm-kitty")).0,
            Images::Kitty
        );
        let s = split(b"\x1b_Gi=31;ENOTSUPPORTED\x1b\\\x1b[?1;2c");
        assert_eq!(
            from_answers(&s.answers, &env("xterm")).0,
            Images::Halfblocks
        );
        // Cut short: no answer, the bytes kept.
        for cut in [&b"x\x1b[?62;2"[..], b"\x1b_Gi=31;O"] {
            let s = split(cut);
            assert_eq!((s.answers.len(), &s.rest[..]), (0, cut));
        }
        // A lone Escape typed at the end is a key.
        let s = split(b"\x1b");
        assert!(matches!(
            events(&s.rest)[..],
            [Event::Key(KeyEvent {
                code: KeyCode::Esc,
                ..
            })]
        ));
    }
}
