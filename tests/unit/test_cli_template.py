"""``--format``'s Go template renderer (``cli.template``) and docker's formatter (``cli.formatter``):
what a docker user's format string prints, and the one-line errors for the ones that fail."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cli import formatter, template
from cli.template import GoStruct, NilMap, NilSlice, StrMap, render

DATA: dict[str, Any] = {
    "Id": "abc123",
    "Name": "/web",
    "State": {"Status": "running", "Running": True, "Pid": 42, "ExitCode": 0},
    "Config": {"Labels": StrMap({"b": "2", "a": "1"}), "Env": ["A=1", "B=2"], "Cmd": NilSlice(), "Image": "busybox"},
    "Mounts": [
        {"Source": "/tmp", "Destination": "/mnt", "RW": True},
        {"Source": "/x", "Destination": "/y", "RW": False},
    ],
    "Raw": {"k": None, "n": 1.5, "big": 1e6, "list": [1, "a", None, True], "m": {"z": 1, "a": [1, 2]}},
}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("plain text", "plain text"),
        ("{{.Id}}", "abc123"),
        ("{{.State.Status}}", "running"),
        ("{{.State.Running}} {{.State.Pid}}", "true 42"),
        ("{{.Config.Labels}}", "map[a:1 b:2]"),
        ('{{index .Config.Labels "a"}}', "1"),
        ('[{{index .Config.Labels "nokey"}}]', "[]"),
        ("{{.Config.Labels.nokey}}", "<no value>"),
        ("{{.Config.Env}}", "[A=1 B=2]"),
        ("{{.Config.Cmd}}", "[]"),
        ("{{.Raw.k}}", "<nil>"),
        ("{{.Raw.n}} {{.Raw.big}}", "1.5 1e+06"),
        ("{{.Raw.list}}", "[1 a <nil> true]"),
        ("{{.Raw.m}}", "map[a:[1 2] z:1]"),
        (
            "{{json .Mounts}}",
            '[{"Source":"/tmp","Destination":"/mnt","RW":true},{"Source":"/x","Destination":"/y","RW":false}]',
        ),
        ("{{json .Config.Labels}}", '{"b":"2","a":"1"}'),
        ('{{json "<a&b>"}}', '"<a&b>"'),
        ("{{json .Raw.n}} {{json .Raw.big}} {{json .Config.Cmd}}", "1.5 1000000 null"),
        ('{{join .Config.Env ","}}', "A=1,B=2"),
        ('{{split "a:b:c" ":"}}', "[a b c]"),
        ('{{upper "abc"}} {{lower "ABC"}} {{title "hello big world"}}', "ABC abc Hello Big World"),
        ('{{pad "x" 2 1}}|{{truncate "abcdef" 3}}', "  x |abc"),
        ('{{printf "%s-%d-%v-%t" .Name .State.Pid .State.Running true}}', "/web-42-true-true"),
        (
            '{{printf "%q|%5s|%-5s|%05d|%x|%.2f|%%" .Name "ab" "ab" 42 255 3.14159}}',
            '"/web"|   ab|ab   |00042|ff|3.14|%',
        ),
        ('{{printf "%d" "str"}} {{printf "%s"}} {{printf "x" 1}}', "%!d(string=str) %!s(MISSING) x%!(EXTRA int=1)"),
        ("{{range .Mounts}}{{.Source}}:{{.Destination}};{{end}}", "/tmp:/mnt;/x:/y;"),
        ("{{range $i, $m := .Mounts}}{{$i}}={{$m.RW}} {{end}}", "0=true 1=false "),
        ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}},{{end}}", "a=1,b=2,"),
        ("{{range .Config.Cmd}}x{{else}}empty{{end}}", "empty"),
        ("{{range .Raw.list}}{{if not .}}{{break}}{{end}}{{.}},{{end}}", "1,a,"),
        ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
        ("{{if .State.ExitCode}}bad{{else if .State.Running}}running{{else}}?{{end}}", "running"),
        ("{{with .State}}{{.Status}}{{end}}{{with .Config.Cmd}}no{{else}}none{{end}}", "runningnone"),
        ('{{if eq .State.Status "running" "paused"}}y{{end}}{{if ne .State.Pid 1}}n{{end}}', "yn"),
        ("{{if and .State.Running (gt .State.Pid 10)}}ok{{end}} {{or .State.ExitCode 7}}", "ok 7"),
        ("{{len .Mounts}} {{len .Name}} {{len .Config.Labels}}", "2 4 2"),
        ("{{(index .Mounts 1).Source}} {{index .Raw.list 1}}", "/x a"),
        ("{{.}}", None),
        ('{{$x := "v"}}{{$x}}{{$x = "w"}}{{$x}}', "vw"),
        ('{{.Name | printf "%s!"}} {{"a" | upper}}', "/web! A"),
        ("{{/* a comment */}}x", "x"),
        ("a  {{- .Id -}}  b", "aabc123b"),
        ("a\n  {{- /* c */ -}}\n  b", "ab"),
        ("{{- .Id}} {{.Id -}} \n", "abc123 abc123"),
        ('{{print 1 2 "a" 3}}|{{println 1 "a"}}', "1 2a3|1 a\n"),
        ("{{slice .Name 1 3}} {{0x10}} {{-1}} {{1e3}} {{'a'}}", "we 16 -1 1000 97"),
    ],
)
def test_renders_like_go(text: str, want: str | None) -> None:
    got = render(text, DATA)
    if want is None:  # {{.}}: the whole map, keys sorted
        assert got.startswith("map[Config:map[Cmd:[] Env:[A=1 B=2] Image:busybox Labels:map[a:1 b:2]] Id:abc123 ")
    else:
        assert got == want


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (True, "true"),
        (False, "false"),
        (None, "<nil>"),
        (0, "0"),
        (-12, "-12"),
        (1.0, "1"),
        (0.1, "0.1"),
        (123456.0, "123456"),
        (1234567.0, "1.234567e+06"),
        (1e-5, "1e-05"),
        (1e21, "1e+21"),
        ([], "[]"),
        (["a", "b"], "[a b]"),
        ([["a"], {"k": "v"}], "[[a] map[k:v]]"),
        ({"b": 1, "a": True}, "map[a:true b:1]"),
        ({}, "map[]"),
        (NilSlice(), "[]"),
        (NilMap(), "map[]"),
        (GoStruct("T", {"A": 1, "B": "x"}), "{1 x}"),
    ],
)
def test_go_default_format(value: Any, want: str) -> None:
    assert template.go_str(value) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{foo .}}", 'template: :1: function "foo" not defined'),
        ("{{.Id", "template: :1: unclosed action"),
        ("a\n{{end}}", "template: :2: unexpected {{end}}"),
        ("{{if .Id}}x", "template: :1: unexpected EOF"),
        ("{{else}}", "template: :1: unexpected {{else}}"),
        ("{{}}", "template: :1: missing value for command"),
        ("{{$x}}", 'template: :1: undefined variable "$x"'),
        ("{{(.Id}}", "template: :1: unclosed left paren"),
        ("{{.Id)}}", "template: :1: unexpected right paren"),
        ("{{#}}", "template: :1: unrecognized character in action: U+0023 '#'"),
        ('{{"abc}}', "template: :1: unterminated quoted string"),
        ("{{.Id | 3}}", "template: :1: non executable command in pipeline stage 2"),
        ("{{break}}", "template: :1: {{break}} outside {{range}}"),
        ('{{template "x"}}', "template: :1: {{template}} is not supported in --format"),
    ],
)
def test_parse_errors_read_as_go(text: str, message: str) -> None:
    with pytest.raises(template.ParseError) as exc:
        template.parse(text)
    assert str(exc.value) == message


CTX = GoStruct("*formatter.ContainerContext", {"ID": "abc", "Names": "web"})


@pytest.mark.parametrize(
    ("text", "data", "missing_key", "message"),
    [
        (
            "{{.Nope}}",
            CTX,
            "default",
            'template: :1:2: executing "" at <.Nope>: can\'t evaluate field Nope in type *formatter.ContainerContext',
        ),
        ("{{.Nope}}", DATA, "error", 'template: :1:2: executing "" at <.Nope>: map has no entry for key "Nope"'),
        (
            "{{.State.Nope}}",
            DATA,
            "error",
            'template: :1:8: executing "" at <.State.Nope>: map has no entry for key "Nope"',
        ),
        (
            "x\n {{.Name.X}}",
            DATA,
            "default",
            'template: :2:8: executing "" at <.Name.X>: can\'t evaluate field X in type string',
        ),
        (
            "{{index .Mounts 5}}",
            DATA,
            "default",
            'template: :1:2: executing "" at <index .Mounts 5>: error calling index: index out of range: 5',
        ),
        (
            "{{upper .State.Pid}}",
            DATA,
            "default",
            'template: :1:2: executing "" at <upper .State.Pid>: error calling upper: '
            "wrong type for value; expected string; got int",
        ),
        (
            "{{upper}}",
            DATA,
            "default",
            'template: :1:2: executing "" at <upper>: wrong number of args for upper: want 1 got 0',
        ),
        (
            '{{.Id "arg"}}',
            DATA,
            "default",
            'template: :1:2: executing "" at <.Id>: Id is not a method but has arguments',
        ),
        (
            "{{eq .Id 1}}",
            DATA,
            "default",
            'template: :1:2: executing "" at <eq .Id 1>: error calling eq: incompatible types for comparison',
        ),
    ],
)
def test_execution_errors_read_as_go(text: str, data: Any, missing_key: str, message: str) -> None:
    with pytest.raises(template.ExecError) as exc:
        template.parse(text).execute(data, missing_key=missing_key)
    assert str(exc.value) == message


def test_missing_map_key_is_no_value_by_default() -> None:
    assert render("{{.Nope}}|{{.State.Nope}}|{{.Nope.Deeper}}", DATA) == "<no value>|<no value>|<no value>"


def test_struct_methods_take_arguments() -> None:
    ctx = GoStruct("T", {"Label": template.method_with_args(lambda k: {"a": "1"}.get(k, "")), "ID": lambda: "x"})
    assert render('{{.Label "a"}}|{{.Label "b"}}|{{.ID}}', ctx) == "1||x"
    assert template.go_json(ctx) == '{"ID":"x"}'


# -- docker's formatter ----------------------------------------------------------------------------------------------

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def _container(name: str, **over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "id": name[0] * 64,
        "name": name,
        "image": "busybox",
        "image_id": "sha256:" + "b" * 64,
        "created_at": (NOW - dt.timedelta(seconds=30)).isoformat(),
        "labels": {"app": "x", "com.example.tier": "<web>"},
        "config": {"mounts": [{"type": "bind", "source": "/tmp", "target": "/mnt"}], "network_mode": "none"},
        "mounts": [{"type": "bind", "source": "/tmp", "destination": "/mnt", "rw": True, "propagation": "rprivate"}],
        "path": "sleep",
        "args": ["1000"],
        "state": {"status": "running", "running": True, "pid": 4, "exit_code": 0, "started_at": NOW.isoformat()},
    }
    c.update(over)
    return c


def _ps(fmt: str, containers: list[dict[str, Any]]) -> str:
    rows = [formatter.container_context(c, NOW) for c in containers]
    return formatter.render_list(
        formatter.list_format(fmt, formatter.CONTAINER_TABLE), rows, formatter.CONTAINER_HEADERS
    )


def test_ps_template_one_line_per_container() -> None:
    out = _ps(
        "{{.Names}} {{.ID}} {{.Image}} {{.Command}} {{.State}} {{.Labels}} {{.Mounts}} {{.Networks}}",
        [_container("web"), _container("db")],
    )
    assert out.splitlines() == [
        'web wwwwwwwwwwww busybox "sleep 1000" running app=x,com.example.tier=<web> /tmp none',
        'db dddddddddddd busybox "sleep 1000" running app=x,com.example.tier=<web> /tmp none',
    ]
    assert (
        _ps(
            '{{.Label "app"}}|{{.Label "nope"}}|{{.LocalVolumes}}|{{.Size}}|{{.Ports}}|{{.Platform}}',
            [_container("web")],
        )
        == "x||0|0B||<nil>\n"
    )


def test_ps_table_header_from_field_names_aligned_like_tabwriter() -> None:
    out = _ps("table {{.ID}}\\t{{.Names}}\\t{{.Mounts}}\\t{{.Networks}}", [_container("web"), _container("longername")])
    assert out == (
        "CONTAINER ID   NAMES        MOUNTS    NETWORKS\n"
        "wwwwwwwwwwww   web          /tmp      none\n"
        "llllllllllll   longername   /tmp      none\n"
    )
    assert (
        _ps('table {{.Image}}\\t{{.Label "com.example.tier"}}\\t{{.Platform}}', []) == "IMAGE     tier      PLATFORM\n"
    )


def test_ps_table_key_alone_is_the_default_table() -> None:
    out = _ps("table", [_container("web")]).splitlines()
    assert out[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert out[1].startswith('wwwwwwwwwwww   busybox   "sleep 1000"   ')


def test_ps_json_is_docker_shape_keys_sorted_html_escaped() -> None:
    out = _ps("json", [_container("web")])
    assert out.startswith('{"Command":"\\"sleep 1000\\"","CreatedAt":"')
    assert '"Labels":"app=x,com.example.tier=\\u003cweb\\u003e"' in out
    assert '"Names":"web","Networks":"none","Platform":null,"Ports":"","RunningFor":"30 seconds ago"' in out


def test_ps_literal_text_format_prints_it_per_row() -> None:
    assert _ps("garbage", [_container("web"), _container("db")]) == "garbage\ngarbage\n"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (
            "{{.Nope}}",
            'failed to execute template: template: :1:2: executing "" at <.Nope>: '
            "can't evaluate field Nope in type *formatter.ContainerContext",
        ),
        ("{{foo .ID}}", 'failed to parse template: template: :1: function "foo" not defined'),
        ("table {{.ID", "failed to parse template: template: :1: unclosed action"),
    ],
)
def test_ps_bad_format_is_one_error_and_no_output(fmt: str, message: str) -> None:
    with pytest.raises(formatter.FormatError) as exc:
        _ps(fmt, [_container("web")])
    assert str(exc.value) == message


def test_images_contexts_and_headers() -> None:
    row = formatter.image_context("busybox", "latest", "<none>", "624a1e9d2c4c", "2024-01-01T00:00:00Z", 2140000, NOW)
    out = formatter.render_list(
        "table {{.ID}}\\t{{.Repository}}\\t{{.Tag}}\\t{{.Digest}}\\t{{.Size}}", [row], formatter.IMAGE_HEADERS
    )
    assert (
        out == "IMAGE ID       REPOSITORY   TAG       DIGEST    SIZE\n"
        "624a1e9d2c4c   busybox      latest    <none>    2.14MB\n"
    )
    assert (
        formatter.render_list("{{.CreatedSince}}|{{.Containers}}", [row], formatter.IMAGE_HEADERS)
        == "4 months ago|N/A\n"
    )
    assert formatter.render_list("{{json .}}", [row], formatter.IMAGE_HEADERS).startswith(
        '{"Containers":"N/A","CreatedAt":"2024-01-01 00:00:00 +0000 UTC","CreatedSince":"4 months ago",'
        '"Digest":"\\u003cnone\\u003e"'
    )


def test_tabwriter_matches_go() -> None:
    assert formatter.tabwrite("a\tbb\tc\nccc\td\te\n") == "a         bb        c\nccc       d         e\n"
    assert formatter.tabwrite("averyveryverylongcell\tx\n\ny\tz\n") == "averyveryverylongcell   x\n\ny         z\n"


def test_inspect_renders_docker_names_missing_key_is_an_error() -> None:
    obj = {
        "Id": "abc",
        "Name": "/web",
        "State": {"Status": "running"},
        "Config": {"Labels": {"a": "b"}, "Entrypoint": None, "Env": None},
    }
    render = formatter.inspect_renderer(
        '{{.State.Status}} {{.Name}} {{.Config.Labels}} [{{index .Config.Labels "x"}}] {{.Config.Entrypoint}}'
    )
    assert render(obj) == "running /web map[a:b] [] []\n"
    with pytest.raises(formatter.FormatError) as exc:
        formatter.inspect_renderer("{{.Config.Nope}}")(obj)
    assert (
        str(exc.value)
        == 'template parsing error: template: :1:9: executing "" at <.Config.Nope>: map has no entry for key "Nope"'
    )
    with pytest.raises(formatter.FormatError) as exc:
        formatter.inspect_renderer("{{foo}}")
    assert str(exc.value) == 'template parsing error: template: :1: function "foo" not defined'
    assert formatter.inspect_renderer("{{.Name}}\\t{{.Id}}")(obj) == "/web\\tabc\n"  # inspect keeps \t as written
