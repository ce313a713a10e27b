"""What `import ftnb` offers: every public name listed by dir() (tab completion) and reachable, one meaning each."""
import importlib
import subprocess
import sys

import pytest

import ftnb


def public():
    return [n for n in dir(ftnb) if not n.startswith("_")]


def test_dir_lists_the_lazy_names_before_they_are_imported():
    code = ("import sys, ftnb\n"
            "names = dir(ftnb)\n"
            "print(all(n in names for n in ('train', 'TrainConfig', 'resume', 'load_run', 'probe_run', "
            "'format_summary', 'export_model', 'push_to_hub', 'export', 'Studio', 'bundled')), "
            "'torch' in sys.modules, 'ftnb.core.train' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["True", "False", "False"], r.stderr  # listed, nothing heavy imported for it


def test_every_listed_name_resolves():
    for name in public():
        assert getattr(ftnb, name) is not None, name
    assert set(importlib.import_module("ftnb.core").__all__) <= set(public())


def test_export_is_the_package_and_its_functions_have_names_of_their_own():
    from ftnb.export.hub import push_to_hub
    from ftnb.export.merge import export
    assert ftnb.export is sys.modules["ftnb.export"] and ftnb.export.export is export
    assert ftnb.export_model is export and ftnb.push_to_hub is push_to_hub


def test_probe_functions_are_reachable_and_stay_functions():
    from ftnb.core.probe import format_summary
    from ftnb.core.probe_saved import probe_run
    importlib.import_module("ftnb.core.probe")  # the module imported: the names must still be the functions
    assert ftnb.probe_run is probe_run and ftnb.format_summary is format_summary


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        ftnb.trian
