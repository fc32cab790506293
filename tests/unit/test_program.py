"""The kernel program's files as the decoder and the loaders see them: the
record's layout read from bpf/resreap.h, the kernel requirement, why the
prebuilt object cannot load."""

from __future__ import annotations

import ctypes as ct

import pytest

from resreap.errors import BackendUnavailable
from resreap.sources import core_loader
from resreap.sources.program import BPF_DIR, counter_slots, event_layout, kernel_version, struct_layout, too_old


class _Event(ct.Structure):
    """struct event as a C compiler lays it out (natural alignment)."""
    _fields_ = [("ts_ns", ct.c_uint64), ("skaddr", ct.c_uint64), ("cpu_pid", ct.c_uint32),
                ("family", ct.c_uint16), ("sport", ct.c_uint16), ("dport", ct.c_uint16),
                ("oldstate", ct.c_uint8), ("newstate", ct.c_uint8),
                ("saddr", ct.c_uint8 * 16), ("daddr", ct.c_uint8 * 16)]


def test_the_record_layout_is_read_from_the_header_as_c_lays_it_out():
    layout = event_layout()
    assert layout["size"] == ct.sizeof(_Event) == 64
    assert [f[0] for f in layout["fields"]] == [name for name, _ in _Event._fields_]
    for name, offset, _code in layout["fields"]:
        assert offset == getattr(_Event, name).offset, name
    assert dict((n, c) for n, _o, c in layout["fields"])["saddr"] == "16s"


def test_padding_and_a_wider_array_follow_natural_alignment():
    header = "struct r {\n\tu8 a;\n\tu32 b;\t/* padded to 4 */\n\tu16 c[3];\n\tu8 d;\n};\n"
    assert struct_layout(header, "r") == {
        "size": 16, "fields": [["a", 0, "B"], ["b", 4, "I"], ["c", 8, "3H"], ["d", 14, "B"]]}


def test_a_missing_struct_is_a_one_line_error():
    from resreap.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="struct nope"):
        struct_layout("struct other { u8 a; };", "nope")


@pytest.mark.parametrize("release, old", [
    ("6.1.0-27-amd64", False), ("5.8.0", False), ("5.15.0-91-generic", False),
    ("5.7.19", True), ("4.19.0-26-amd64", True), ("2.6.78", True), ("garbage", True)])
def test_bpf_needs_linux_5_8(release, old):
    assert (too_old(release) is not None) == old
    if old and release != "garbage":
        assert "older than 5.8" in too_old(release) and "polling" in too_old(release)


def test_kernel_version_reads_major_and_minor():
    assert kernel_version("6.18.44-fc-v1300") == (6, 18)


def test_why_the_prebuilt_object_cannot_load(tmp_path, monkeypatch):
    missing = tmp_path / "resreap.bpf.o"
    monkeypatch.setattr(core_loader, "VMLINUX_BTF", str(tmp_path / "no-btf"))
    assert "no BTF" in core_loader.unusable(missing)
    (tmp_path / "btf").write_bytes(b"")
    monkeypatch.setattr(core_loader, "VMLINUX_BTF", str(tmp_path / "btf"))
    assert "no prebuilt program" in core_loader.unusable(missing)
    assert "scripts/build-bpf" in core_loader.unusable(missing)


def test_the_shipped_header_declares_the_settings_the_loader_writes():
    """core_loader writes four u32 (first_pass, wakeup_every, credit,
    switchable) as the program's .rodata: the header's struct must be
    exactly that."""
    layout = struct_layout((BPF_DIR / "resreap.h").read_text(), "resreap_config")
    assert layout == {"size": 16, "fields": [["first_pass", 0, "I"], ["wakeup_every", 4, "I"],
                                             ["credit", 8, "I"], ["switchable", 12, "I"]]}


def test_a_program_file_others_may_rewrite_is_never_loaded(tmp_path, monkeypatch):
    """Root loads the object into the kernel: a group-writable file (or
    directory above it) is refused, as the config is, and said why."""
    import os

    (tmp_path / "btf").write_bytes(b"")
    monkeypatch.setattr(core_loader, "VMLINUX_BTF", str(tmp_path / "btf"))
    obj = tmp_path / "resreap.bpf.o"
    obj.write_bytes(b"\x7fELF")
    (tmp_path / "resreap.h").write_text((BPF_DIR / "resreap.h").read_text())
    os.chmod(tmp_path, 0o700)
    assert core_loader.unusable(obj) is None
    os.chmod(obj, 0o664)
    assert "writable by group or others" in core_loader.unusable(obj)


def test_the_counter_slots_are_the_headers_enum():
    """The program indexes its counter map by enum resreap_counter; the
    reader takes the slot numbers from the same header, and the map is
    sized by the enum's last member."""
    slots = counter_slots()
    assert slots == {"COUNTER_LOST": 0, "COUNTER_SENT": 1, "COUNTER_SLOTS": 2}
    source = (BPF_DIR / "resreap.bpf.c").read_text()
    assert "counter(COUNTER_LOST)" in source and "counter(COUNTER_SENT)" in source
    assert source.count("COUNTER_SLOTS") == 2  # the CO-RE map and the bcc map


def test_counter_slots_of_a_header_without_them(tmp_path):
    (tmp_path / "resreap.h").write_text("struct event { u64 a; };")
    with pytest.raises(BackendUnavailable, match="resreap_counter"):
        counter_slots(tmp_path)
