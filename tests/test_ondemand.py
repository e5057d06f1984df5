"""The Open OnDemand app in `ondemand/kdgat-jupyter/`, rendered with Ruby's ERB as OnDemand renders it.

The form and manifest must be valid YAML; `submit.yml.erb` must turn the form's values into the SLURM options of the
session (and refuse a bad value with a message naming the field); the templates, run the way OnDemand's "basic"
batch-connect job script runs them (before.sh sourced, script.sh in the background, after.sh waiting for the port),
must start JupyterLab from the project's `.venv` with the `kdgat` kernel of the session, behind the password that
the app's Connect button posts. The last test really starts that JupyterLab on a free loopback port, with HOME and
every Jupyter folder in a temporary directory, logs in like the Connect button and lists the kernelspecs.

Without `ruby` the ERB tests are skipped, unless `KD_GAT_REQUIRE_RUBY` is set (CI), where they fail.
"""
from __future__ import annotations
import html.parser, http.cookiejar, json, os, re, shutil, signal, subprocess, sys, time, urllib.error, urllib.parse, urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "ondemand" / "kdgat-jupyter"
VENV_PYTHON = Path(sys.executable)  # the project's Python: the session's .venv is this one
REQUIRE = os.environ.get("KD_GAT_REQUIRE_RUBY", "") not in ("", "0")

# Renders one ERB file the way OnDemand does (trim mode "-"): submit.yml.erb and view.html.erb see the session's
# attributes as bare names, the templates as `context.<name>`.
RENDER_RB = r'''
require "erb"
require "json"
class Session
  def initialize(values) = @values = values
  def method_missing(name, *args) = @values.key?(name.to_s) ? @values[name.to_s] : super
  def respond_to_missing?(name, all = false) = @values.key?(name.to_s) || super
  def context = self
  def scope = binding
end
values, src, dst = JSON.parse(File.read(ARGV[0])), ARGV[1], ARGV[2]
File.write(dst, ERB.new(File.read(src), trim_mode: "-").result(Session.new(values).scope))
'''

# What OnDemand's "basic" template job script does around the app's three templates, with its helper functions
# (host, find_port, create_passwd, wait_until_port_used, clean_up) and connection.yml.
OOD_JOB = r'''
host=127.0.0.1
find_port() { python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"; }
create_passwd() { tr -dc 'A-Za-z0-9' < /dev/urandom 2>/dev/null | head -c "${1:-32}"; }
port_used() { python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)' "${1%:*}" "${1##*:}" 2>/dev/null; }
wait_until_port_used() { local i; for ((i = 0; i < ${2:-60} * 4; i++)); do port_used "$1" && return 0; sleep 0.25; done; return 1; }
clean_up() { [[ -n "${SCRIPT_PID:-}" ]] && kill "${SCRIPT_PID}" 2>/dev/null; exit "${1:-0}"; }
source ./before.sh
(umask 077; printf 'host: %s\nport: %s\npassword: %s\n' "$host" "$port" "$password" > connection.yml)
bash ./script.sh &
SCRIPT_PID=$!
trap 'kill "${SCRIPT_PID}" 2>/dev/null; wait "${SCRIPT_PID}"; exit 143' TERM  # stopped: JupyterLab first, then this script
[[ -n "${KDGAT_DRY_RUN:-}" ]] || source ./after.sh  # a dry run opens no port
echo READY
wait "${SCRIPT_PID}"
'''


def _ruby() -> str:
    ruby = shutil.which("ruby")
    if not ruby:
        why = "ruby not found (Debian: apt install ruby): OnDemand's ERB files cannot be rendered"
        if REQUIRE: pytest.fail(f"KD_GAT_REQUIRE_RUBY is set but {why}")
        pytest.skip(why)
    return ruby


def render(src: Path, dst: Path, values: dict) -> subprocess.CompletedProcess:
    "Render `src` into `dst` with Ruby's ERB; the CompletedProcess says whether it raised."
    ruby = _ruby()
    dst.parent.mkdir(parents=True, exist_ok=True)
    (dst.parent / f".{dst.name}.json").write_text(json.dumps(values))
    script = dst.parent / ".render.rb"
    script.write_text(RENDER_RB)
    return subprocess.run([ruby, str(script), str(dst.parent / f".{dst.name}.json"), str(src), str(dst)],
                          capture_output=True, text=True, timeout=30)


def form_values(**over) -> dict:
    "The values the form submits: its defaults, with `over` on top."
    form = yaml.safe_load((APP / "form.yml").read_text())
    values = {name: form["attributes"].get(name, {}).get("value", "") for name in form["form"]}
    values.update(cluster=form["cluster"][0], account="PAS1234", project_dir=str(VENV_PYTHON.parents[2]))
    values.update(over)
    return values


def test_form_and_manifest_are_yaml():
    manifest = yaml.safe_load((APP / "manifest.yml").read_text())
    assert manifest["role"] == "batch_connect" and manifest["category"] == "Interactive Apps"
    form = yaml.safe_load((APP / "form.yml").read_text())
    assert form["cluster"] and "cluster" in form["form"]
    missing = [n for n in form["form"] if n != "cluster" and n not in form["attributes"]]
    assert not missing, f"form.yml: fields without attributes: {missing}"
    fields = set(form["form"])
    assert {"account", "partition", "hours", "cores", "memory_gb", "gpus", "gpu_type", "project_dir"} <= fields
    assert form["attributes"]["account"]["required"] and form["attributes"]["project_dir"]["widget"] == "path_selector"
    assert ["V100", "v100"] in form["attributes"]["gpu_type"]["options"]
    # every attribute a template reads is a field of the form
    used = set()
    for f in [APP / "submit.yml.erb", *APP.glob("template/*.erb")]:
        used |= set(re.findall(r"context\.(\w+)", f.read_text()))
    assert used and used <= fields, used - fields


def test_submit_maps_the_form_to_slurm_options(tmp_path):
    out = tmp_path / "submit.yml"
    r = render(APP / "submit.yml.erb", out, form_values(partition="gpu", hours=3, cores=8, memory_gb=64, gpus=2, gpu_type="v100"))
    assert r.returncode == 0, r.stderr
    submit = yaml.safe_load(out.read_text())
    assert submit["batch_connect"]["template"] == "basic"
    assert submit["script"]["native"] == ["--account=PAS1234", "--time=3:00:00", "--nodes=1", "--ntasks-per-node=1",
                                          "--cpus-per-task=8", "--partition=gpu", "--mem=64G", "--gres=gpu:v100:2"]
    # a CPU session on the default partition with the default memory asks for no partition, memory or GPU
    r = render(APP / "submit.yml.erb", out, form_values(partition="", gpus="0", memory_gb="0", cores="2"))
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(out.read_text())["script"]["native"] == ["--account=PAS1234", "--time=2:00:00", "--nodes=1",
                                                                   "--ntasks-per-node=1", "--cpus-per-task=2"]
    r = render(APP / "submit.yml.erb", out, form_values(gpus=1, gpu_type=""))
    assert "--gres=gpu:1" in yaml.safe_load(out.read_text())["script"]["native"]
    # a bad value never reaches sbatch: the message names the field
    for field, value, says in [("account", "PAS1234; rm -rf ~", "Project (SLURM account): expected"),
                               ("account", "", "Project (SLURM account): expected"), ("hours", "0", "Hours: expected")]:
        r = render(APP / "submit.yml.erb", out, form_values(**{field: value}))
        assert r.returncode != 0 and says in r.stderr, (field, value, r.stderr)


def session(tmp_path: Path, **over) -> tuple[Path, dict]:
    "A session folder with the app's templates rendered for the form's values (`over`), and a private environment."
    values = form_values(data_root=str(tmp_path / "kd-gat-data"), **over)
    folder = tmp_path / "session"
    for name in ("before.sh", "script.sh", "after.sh"):
        r = render(APP / "template" / f"{name}.erb", folder / name, values)
        assert r.returncode == 0, r.stderr
    (folder / "job.sh").write_text(OOD_JOB)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "KD_GAT_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(home / ".jupyter"), JUPYTER_DATA_DIR=str(home / "share/jupyter"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / ".ipython"), OMP_NUM_THREADS="1")
    if os.geteuid() == 0:  # CI runs as root; an OnDemand session never does, so the app itself does not allow it
        # (jupyter_config.py: the one user config file Jupyter still reads beside the session's --config file)
        (home / ".jupyter").mkdir(parents=True)
        (home / ".jupyter" / "jupyter_config.py").write_text("c.ServerApp.allow_root = True\n")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != VENV_PYTHON.parent)  # script.sh activates it
    return folder, env


def test_script_dry_run_starts_jupyterlab_with_the_kernel(tmp_path):
    folder, env = session(tmp_path)
    r = subprocess.run(["bash", "job.sh"], cwd=folder, env={**env, "KDGAT_DRY_RUN": "1"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    conn = yaml.safe_load((folder / "connection.yml").read_text())
    project = VENV_PYTHON.parents[2]
    lines = r.stdout.splitlines()
    assert f"kdgat kernel install --prefix {folder} --name kdgat --display-name Python\\ \\(kdgat\\) " in lines, r.stdout
    assert f"exec jupyter lab --config={folder}/jupyter_server_config.py --ServerApp.root_dir={project} " in lines, r.stdout
    config = (folder / "jupyter_server_config.py").read_text()
    assert f"c.ServerApp.base_url = '/node/127.0.0.1/{conn['port']}/'" in config and f"c.ServerApp.port = {conn['port']}" in config
    assert conn["password"] not in config and re.search(r"hashed_password = 'sha1:\w+:[0-9a-f]{40}'", config), config
    assert oct((folder / "jupyter_server_config.py").stat().st_mode & 0o777) == "0o600"
    # a project folder without .venv: one line that says what to do
    folder, env = session(tmp_path / "novenv", project_dir=str(tmp_path))
    r = subprocess.run(["bash", "./script.sh"], cwd=folder, env={**env, "KDGAT_DRY_RUN": "1", "KDGAT_SESSION_DIR": str(folder)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and ".venv/bin/python not found" in r.stderr and "make setup" in r.stderr, r.stderr


class _Form(html.parser.HTMLParser):
    "The action and the hidden password of the app's Connect form."
    def __init__(self):
        super().__init__()
        self.action, self.password = None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form": self.action = a["action"]
        if tag == "input" and a.get("name") == "password": self.password = a["value"]


@pytest.mark.slow
def test_session_serves_jupyterlab_with_the_kdgat_kernel(tmp_path):
    folder, env = session(tmp_path)
    log = open(tmp_path / "output.log", "w")
    job = subprocess.Popen(["bash", "job.sh"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "READY" not in (tmp_path / "output.log").read_text():
            assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "output.log").read_text()
            time.sleep(0.2)
        conn = yaml.safe_load((folder / "connection.yml").read_text())
        r = render(APP / "view.html.erb", tmp_path / "view.html", conn)
        assert r.returncode == 0, r.stderr
        form = _Form()
        form.feed((tmp_path / "view.html").read_text())
        server = f"http://{conn['host']}:{conn['port']}"
        base = f"/node/{conn['host']}/{conn['port']}/"
        assert form.action.startswith(base + "login?next=") and form.password == conn["password"]
        with pytest.raises(urllib.error.HTTPError) as no_login:
            urllib.request.urlopen(server + base + "api/kernelspecs", timeout=10)
        assert no_login.value.code == 403
        # what the Connect button does: post the password, keep the session cookie
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        page = browser.open(server + form.action, data=urllib.parse.urlencode({"password": form.password}).encode(), timeout=30)
        assert page.status == 200 and urllib.parse.urlparse(page.url).path == base + "lab"
        specs = json.load(browser.open(server + base + "api/kernelspecs", timeout=30))
        assert specs["default"] == "kdgat", specs["default"]
        kdgat = specs["kernelspecs"]["kdgat"]["spec"]
        assert kdgat["display_name"] == "Python (kdgat)" and kdgat["argv"][0] == str(VENV_PYTHON)
        assert kdgat["env"]["KD_GAT_DATA_ROOT"] == str(tmp_path / "kd-gat-data")  # the form's data root: the session's kernel
        assert (folder / "share/jupyter/kernels/kdgat/kernel.json").is_file()  # in the session folder, nowhere else
    finally:
        os.kill(job.pid, signal.SIGTERM)  # the job script stops JupyterLab and waits for it
        try: job.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        log.close()
