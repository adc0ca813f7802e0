#!/usr/bin/env python3
"""The workbench end to end in real terminals, as users start it (no MVLAB_IMAGES).

Terminals: tmux, GNU screen, a plain pty read through pyte (TERM=xterm-256color, as over ssh; it
answers no query), and xterm under Xvfb started as a VT340 (answers the query, draws sixel).
In each: keys typed at once after start are acted on (2 then ?: the Runs view and the help), the
status line names the image protocol and why, a run is started and the terminal resized while it
trains, q quits with exit code 0 and the terminal restored (icanon echo). tmux then goes on with
the whole workflow (live edit, compare, a seed group's band, a half-block image in Samples);
xterm shows a sample image as sixel, checked on a screenshot of the X display against the same
view drawn with half-blocks.

    python3 tests/e2e_tui.py [--mvlab PATH] [--only tmux,screen,pty,xterm] [--keep]
"""
import argparse
import fcntl
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLS, ROWS = 110, 32
WIDE = (130, 40)  # the size resized to while a run trains


class Failed(Exception):
    pass


def sh(*args, **kw):
    # Every wait on a child has a deadline: a hung tool fails the scenario instead of CI.
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60, **kw).stdout


def settle(key):
    """An Escape followed at once by a key reads as Alt+key (GNU screen holds an Escape 300 ms
    to see if a key sequence follows); a user pauses."""
    time.sleep(0.6 if key == "Escape" else 0.02)


# --- terminals: start a command, type keys, read the screen as text, resize, close ----------

class Tmux:
    name = "tmux"

    def __init__(self, cmd, env, cols, rows):
        self.sock = f"mvlab-e2e-{os.getpid()}"
        self.t = ["tmux", "-L", self.sock, "-f", "/dev/null"]
        sh(*self.t, "new-session", "-d", "-s", "e2e", "-x", str(cols), "-y", str(rows),
           " ".join(f"{k}={v}" for k, v in env.items()) + " " + cmd)

    def keys(self, *keys):
        for k in keys:
            named = k in ("Enter", "Escape", "Space")
            sh(*self.t, "send-keys", "-t", "e2e", *([k] if named else ["-l", k]))
            settle(k)

    def text(self):
        return sh(*self.t, "capture-pane", "-p", "-t", "e2e")

    def resize(self, cols, rows):
        sh(*self.t, "resize-window", "-t", "e2e", "-x", str(cols), "-y", str(rows))

    def close(self):
        subprocess.run([*self.t, "kill-server"], capture_output=True, timeout=30)


class Pty:
    """A pseudo-terminal whose output is rendered by pyte; nothing answers a query."""
    name = "pty"
    KEYS = {"Enter": b"\r", "Escape": b"\x1b", "Space": b" "}

    def __init__(self, cmd, env, cols, rows, argv=None):
        import pyte
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            full = {**os.environ, "TERM": "xterm-256color", **env}
            for k in ("TMUX", "STY", "TERM_PROGRAM"):
                full.pop(k, None)
            argv = argv or ["sh", "-c", cmd]
            os.execvpe(argv[0], argv, full)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                # pyte has no alternate screen; entering one starts a blank screen.
                self.stream.feed(data.replace(b"\x1b[?1049h", b"\x1b[?1049h\x1b[2J"))

    def keys(self, *keys):
        for k in keys:
            os.write(self.fd, self.KEYS.get(k, k.encode()))
            settle(k)

    def text(self):
        with self.lock:
            return "\n".join(line.rstrip() for line in self.screen.display)

    def resize(self, cols, rows):
        with self.lock:
            self.screen.resize(rows, cols)
        # The kernel sends SIGWINCH to the terminal's foreground process group.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


class Screen(Pty):
    """GNU screen, itself in a pty (its own TERM is screen*, $STY is set)."""
    name = "screen"

    def __init__(self, cmd, env, cols, rows):
        self.dir = tempfile.mkdtemp(prefix="screens-")
        os.chmod(self.dir, 0o700)
        env = {**env, "SCREENDIR": self.dir}
        super().__init__(cmd, env, cols, rows,
                         argv=["screen", "-q", "-c", "/dev/null", "-S", f"e2e{os.getpid()}",
                               "sh", "-c", " ".join(f"{k}={v}" for k, v in env.items()) + " " + cmd])

    def close(self):
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)


class XTerm:
    """xterm -ti vt340 under Xvfb: keys through XTEST, text through print-immediate (F9)."""
    name = "xterm"
    KEYS = {"Enter": "Return", "Escape": "Escape", "Space": "space"}

    def __init__(self, cmd, env, cols, rows, dump):
        self.dump = dump
        os.makedirs(dump, exist_ok=True)
        n = next(n for n in range(90, 400) if not os.path.exists(f"/tmp/.X{n}-lock"))
        self.display = f":{n}"
        self.xvfb = subprocess.Popen(["Xvfb", self.display, "-screen", "0", "1400x900x24",
                                      "-nolisten", "tcp"],
                                     stderr=open(os.path.join(dump, "..", "xvfb.log"), "w"))
        deadline = time.time() + 20
        while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
            if time.time() > deadline or self.xvfb.poll() is not None:
                raise Failed(f"Xvfb did not start on {self.display}")
            time.sleep(0.05)
        self.env = {**os.environ, "DISPLAY": self.display}
        full = {**self.env, **env}
        for k in ("TMUX", "STY", "TERM_PROGRAM"):
            full.pop(k, None)
        self.xterm = subprocess.Popen(
            ["xterm", "-ti", "vt340", "-geometry", f"{cols}x{rows}+0+0",
             "-xrm", f"XTerm*printFileImmediate: {dump}/screen",
             "-xrm", "XTerm*printAttributes: 0",
             "-xrm", "XTerm*VT100.translations: #override <Key>F9: print-immediate()",
             "-e", "sh", "-c", cmd], env=full,
            stderr=open(os.path.join(dump, "..", "xterm.log"), "w"))
        self.window = None

    def xdo(self, *args):
        return sh("xdotool", *args, env=self.env)

    def _focus(self):
        # No window manager: keyboard focus follows the pointer.
        if self.window is None:
            self.window = self.xdo("search", "--sync", "--pid", str(self.xterm.pid)).split()[0]
        self.xdo("mousemove", "--window", self.window, "40", "40")

    def keys(self, *keys):
        self._focus()
        for k in keys:
            if k in self.KEYS:
                self.xdo("key", self.KEYS[k])
            else:
                self.xdo("type", "--delay", "20", k)
            settle(k)

    def text(self):
        self._focus()
        before = set(os.listdir(self.dump))
        self.xdo("key", "F9")
        deadline = time.time() + 5
        while time.time() < deadline:
            new = sorted(set(os.listdir(self.dump)) - before)
            if new:
                time.sleep(0.1)  # let xterm finish writing it
                # Named by the second: taken away so that the next dump is new.
                path = os.path.join(self.dump, new[-1])
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                os.remove(path)
                return text
            time.sleep(0.05)
        raise Failed("xterm wrote no screen dump")

    def resize(self, cols, rows):
        cw, ch = self.cell
        self._focus()
        self.xdo("windowsize", self.window, str(cols * cw + 4), str(rows * ch + 4))

    def screenshot(self, path):
        sh("import", "-window", "root", path, env=self.env)

    def close(self):
        for p in (self.xterm, self.xvfb):
            p.kill()
            p.wait(timeout=30)


# --- the scenario ------------------------------------------------------------------------------

class Session:
    """mvlab in one terminal, started through a wrapper that records what the shell sees."""

    def __init__(self, kind, work, mvlab, env=None, tag=""):
        self.dir = os.path.join(work, f"{kind}{tag}")
        os.makedirs(self.dir)
        wrapper = os.path.join(self.dir, "wrapper.sh")
        size = ("python3 -c 'import fcntl,struct,termios;"
                "print(*struct.unpack(\"HHHH\",fcntl.ioctl(0,termios.TIOCGWINSZ,bytes(8))))'")
        with open(wrapper, "w") as f:
            f.write(f"""cd {work}
{size} > {self.dir}/winsize
echo > {self.dir}/ready
{mvlab} --db {work}/e2e.db 2> {self.dir}/stderr
code=$?
stty -a > {self.dir}/stty
echo $code > {self.dir}/exit
sleep 30
""")
        cmd = f"sh {wrapper}"
        env = env or {}
        if kind == "tmux":
            self.term = Tmux(cmd, env, COLS, ROWS)
        elif kind == "screen":
            self.term = Screen(cmd, env, COLS, ROWS)
        elif kind == "pty":
            self.term = Pty(cmd, env, COLS, ROWS)
        else:
            self.term = XTerm(cmd, env, COLS, ROWS, os.path.join(self.dir, "dumps"))
        self.kind = kind
        self.wait_file("ready", 20)
        if kind == "xterm":
            rows, cols, xpix, ypix = map(int, self.read("winsize").split())
            self.term.cell = (xpix // cols, ypix // rows)

    def read(self, name):
        with open(os.path.join(self.dir, name)) as f:
            return f.read()

    def wait_file(self, name, seconds):
        deadline = time.time() + seconds
        while not os.path.exists(os.path.join(self.dir, name)):
            if time.time() > deadline:
                raise Failed(f"{self.kind}: no {name} file after {seconds} s")
            time.sleep(0.02)

    def wait_for(self, pattern, seconds):
        deadline = time.time() + seconds
        while True:
            text = self.term.text()
            m = re.search(pattern, text)
            if m:
                return m, text
            if time.time() > deadline:
                raise Failed(f"{self.kind}: timed out after {seconds} s waiting for {pattern!r}; "
                             f"the screen:\n{text}")
            time.sleep(0.2)

    def quit(self):
        self.term.keys("q")
        self.wait_file("exit", 20)
        code = self.read("exit").strip()
        if code != "0":
            raise Failed(f"{self.kind}: exit code {code}; stderr: {self.read('stderr')}")
        stty = self.read("stty").split()
        if "icanon" not in stty or "echo" not in stty:
            raise Failed(f"{self.kind}: terminal not restored: {' '.join(stty)}")


def ok(kind, what):
    print(f"ok [{kind}]: {what}", flush=True)


EXPECTED = {
    "tmux": r"images: halfblocks \(inside tmux, not asked",
    "screen": r"images: halfblocks \(inside GNU screen, not asked",
    "pty": r"images: halfblocks \(the terminal did not answer its query within \d+ ms",
    "xterm": r"images: sixel \(the terminal's device attributes include sixel",
}


def common(s):
    """Keys at once, the status line, a run with a resize during it, and back to Experiments."""
    s.term.keys("2")
    time.sleep(0.15)  # both within 200 ms of the start; in a terminal that never answers the
    s.term.keys("?")  # query, while it is still in flight
    _, text = s.wait_for(r"this help", 10)
    if "runs (" not in text:
        raise Failed(f"{s.kind}: the help is shown but not over the Runs view:\n{text}")
    ok(s.kind, "2 and ? typed at once after start: the Runs view and the help")
    s.wait_for(EXPECTED[s.kind], 5)
    ok(s.kind, f"status line: {EXPECTED[s.kind]}")
    s.term.keys("Escape", "1", "Enter")
    m, _ = s.wait_for(r"started run (\d+)", 30)
    run = m.group(1)
    s.wait_for(r"epoch 1/", 60)
    s.term.keys("3")
    s.wait_for(r"epoch \d+/", 10)
    cols, rows = WIDE
    s.term.resize(cols, rows)
    deadline = time.time() + 10
    while True:
        lines = s.term.text().splitlines()
        if len(lines) >= rows - 1 and any(len(l.rstrip()) == cols and l.rstrip().endswith("┐")
                                          for l in lines):
            break
        if time.time() > deadline:
            raise Failed(f"{s.kind}: not redrawn at {cols}x{rows}:\n" + "\n".join(lines))
        time.sleep(0.2)
    _, text = s.wait_for(r"epoch \d+/", 5)
    if f"run {run} completed" in text:
        raise Failed(f"{s.kind}: the run ended before the resize; make it longer")
    ok(s.kind, f"run {run} training; resized to {cols}x{rows} and redrawn")
    s.wait_for(rf"run {run} completed", 180)
    ok(s.kind, f"run {run} completed")
    return run


def tmux_workflow(s, work):
    """After the common part: edit live, run again, compare two runs, a group's band, Samples."""
    exp = os.path.join(work, "experiments", "quickstart.toml")
    with open(exp) as f:
        text = f.read()
    with open(exp, "w") as f:
        f.write(re.sub(r"(?m)^lr = .*$", "lr = 0.001", text))
    s.term.keys("1")
    s.wait_for(r"lr = 0\.001", 10)
    ok(s.kind, "edited experiment shown live")
    s.term.keys("Enter")
    m, _ = s.wait_for(r"started run (\d+)", 30)
    s.wait_for(rf"run {m.group(1)} completed", 180)
    # Runs, newest first: 4 3 2 1, the newest selected. Mark 4 and 3, compare.
    s.term.keys("2")
    s.wait_for(r"completed", 10)
    s.term.keys(" ", "j", " ", "4")
    _, text = s.wait_for(r"differing hyperparameters", 10)
    if "train.lr" not in text:
        raise Failed(f"compare lacks the differing train.lr:\n{text}")
    ok(s.kind, "two runs compared (train.lr differs)")
    # Unmark 3 and 4, then mark run 2's seed group with g.
    s.term.keys("2", " ", "k", " ", "j", "j", "g")
    s.wait_for(r"seed group g1 \(runs [\d, ]+\) marked", 10)
    s.term.keys("4")
    _, text = s.wait_for(r"±1 std band", 10)
    if "g1 mean±std" not in text or "run 3" in text:
        raise Failed(f"compare should draw g1's mean and not run 3:\n{text}")
    ok(s.kind, "seed group marked with g, drawn as its mean with a ±1 std band")
    s.term.keys("7")
    _, text = s.wait_for(r"likeliest mislabelled", 60)
    time.sleep(0.5)
    if not re.search("[▀▄]", s.term.text()):
        raise Failed(f"no half-block image in Samples:\n{text}")
    ok(s.kind, "a training image drawn with half-blocks in Samples")
    s.term.keys("8")
    s.wait_for(r"run 2 log: \d+ lines", 10)
    ok(s.kind, "the Logs view shows the focused run's log")


def ppm(path):
    """A screenshot as (width, height, rows of RGB bytes), read through ImageMagick."""
    data = subprocess.run(["convert", path, "-depth", "8", "ppm:-"], check=True,
                          capture_output=True, timeout=60).stdout
    parts = data.split(maxsplit=4)  # P6 width height maxval pixels
    w, h = int(parts[1]), int(parts[2])
    px = parts[4]
    return w, h, [px[y * w * 3:(y + 1) * w * 3] for y in range(h)]


def panel(text):
    """The cell box (col0, row0, col1, row1) inside the Samples image panel."""
    lines = text.splitlines()
    for r, line in enumerate(lines):
        c0 = line.find("┌labelled")
        if c0 >= 0:
            c1 = line.find("┐", c0)
            r1 = next(i for i in range(r + 1, len(lines)) if lines[i][c0:c0 + 1] == "└")
            return c0 + 1, r + 1, c1, r1
    raise Failed(f"no image panel on screen:\n{text}")


def off_grid(shot, box, cell):
    """Colour changes along pixel rows inside the panel, and how many fall off the cell grid.

    Half-blocks colour whole cells, so a row changes colour only where a cell starts (one
    phase of x modulo the cell width); sixel draws the image's own pixels, changing anywhere."""
    _, _, rows = ppm(shot)
    (c0, r0, c1, r1), (cw, ch) = box, cell
    phases = [0] * cw
    for y in range(r0 * ch, r1 * ch):
        row = rows[2 + y]
        for x in range(c0 * cw + 1, c1 * cw):
            i = (2 + x) * 3
            phases[x % cw] += row[i:i + 3] != row[i - 3:i]
    changes = sum(phases)
    return changes - max(phases), changes


def differing(a, b, box, cell):
    _, _, ra = ppm(a)
    _, _, rb = ppm(b)
    (c0, r0, c1, r1), (cw, ch) = box, cell
    n = 0
    for y in range(2 + r0 * ch, 2 + r1 * ch):
        xa, xb = (2 + c0 * cw) * 3, (2 + c1 * cw) * 3
        sa, sb = ra[y][xa:xb], rb[y][xa:xb]
        n += sum(sa[i:i + 3] != sb[i:i + 3] for i in range(0, len(sa), 3))
    return n, (c1 - c0) * cw * (r1 - r0) * ch


def samples_shot(s, path):
    s.term.keys("7")
    s.wait_for(r"likeliest mislabelled", 60)
    time.sleep(1.5)  # the image is drawn after the table
    text = s.term.text()
    s.term.screenshot(path)
    return text


def xterm_sixel(s, work, mvlab):
    text = samples_shot(s, os.path.join(s.dir, "sixel.png"))
    box = panel(text)
    s.quit()
    ok(s.kind, "q quit, exit code 0, terminal restored")
    s.term.close()
    # The same view drawn with half-blocks, at the same size, for comparison.
    h = Session("xterm", work, mvlab, env={"MVLAB_IMAGES": "halfblocks"}, tag="-halfblocks")
    try:
        h.wait_for(r"images: halfblocks \(MVLAB_IMAGES", 10)
        h.term.resize(*WIDE)
        h.term.keys("2")
        h.wait_for(r"runs \(", 10)
        htext = samples_shot(h, os.path.join(h.dir, "halfblocks.png"))
        if panel(htext) != box:
            raise Failed(f"the panels differ: {panel(htext)} vs {box}")
        h.quit()
    finally:
        h.term.close()
    cell = s.term.cell
    sv, st = off_grid(os.path.join(s.dir, "sixel.png"), box, cell)
    hv, ht = off_grid(os.path.join(h.dir, "halfblocks.png"), box, cell)
    diff, px = differing(os.path.join(s.dir, "sixel.png"), os.path.join(h.dir, "halfblocks.png"),
                         box, cell)
    print(f"   image panel {box[2] - box[0]}x{box[3] - box[1]} cells of {cell[0]}x{cell[1]} px; "
          f"colour changes off the cell grid: sixel {sv}/{st} ({sv / max(st, 1):.1%}), "
          f"half-blocks {hv}/{ht} ({hv / max(ht, 1):.1%}); pixels differing between the two: "
          f"{diff}/{px} ({diff / px:.1%})", flush=True)
    if st == 0 or ht == 0 or sv < 0.3 * st or hv > 0.05 * ht or diff < 0.05 * px:
        raise Failed("the Samples image does not look drawn as sixel")
    ok(s.kind, "the Samples image drawn as sixel (screenshot of the X display)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mvlab", default=os.environ.get("MVLAB", os.path.join(HERE, "target/release/mvlab")))
    ap.add_argument("--only", default="tmux,screen,pty,xterm")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (screenshots, dumps)")
    args = ap.parse_args()
    mvlab = os.path.abspath(args.mvlab)
    work = tempfile.mkdtemp(prefix="mvlab-e2e-")
    os.makedirs(os.path.join(work, "experiments"))
    with open(os.path.join(HERE, "experiments", "quickstart.toml")) as f:
        text = f.read()
    for key, value in [("root", f'"{HERE}/assets/fashion-mnist-sample"'), ("epochs", "8"),
                       ("image_size", "32"), ("resize_bigger", "36")]:
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    with open(os.path.join(work, "experiments", "quickstart.toml"), "w") as f:
        f.write(text)
    passed, failed = 0, 0
    try:
        out = subprocess.run([mvlab, "--db", f"{work}/e2e.db", "run", "experiments/quickstart.toml",
                              "--seeds", "2", "--set", "train.epochs=1"], cwd=work,
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0 or "group g1" not in out.stdout + out.stderr:
            raise Failed(f"seed group failed:\n{out.stdout}{out.stderr}")
        ok("headless", "seed group g1 trained (runs 1 and 2)")
        for kind in args.only.split(","):
            s = None
            try:
                s = Session(kind, work, mvlab)
                common(s)
                if kind == "tmux":
                    tmux_workflow(s, work)
                if kind == "xterm":
                    xterm_sixel(s, work, mvlab)
                else:
                    s.quit()
                    ok(kind, "q quit, exit code 0, terminal restored")
                passed += 1
            except (Failed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                print(f"FAILED [{kind}]: {e}", flush=True)
                failed += 1
            finally:
                if s:
                    s.term.close()
    except (Failed, subprocess.TimeoutExpired) as e:
        print(f"FAILED: {e}")
        failed += 1
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"e2e: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
