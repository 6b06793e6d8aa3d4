"""The hub's parts meet through public interfaces: no hub module reaches a
private member (``x._name``) of any object but its own ``self`` (the healer
once called HubService._call, _realize, _undo and _event)."""
from __future__ import annotations

import ast
import glob
import os

HUB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hub")


def private_reaches(path: str) -> list[str]:
    """``line: expression`` for each private member reached on another object."""
    with open(path) as f:
        tree = ast.parse(f.read())
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
            out.append(f"{node.lineno}: {ast.unparse(node)}")
    return out


def test_no_hub_module_reaches_into_another_objects_private_members():
    modules = sorted(glob.glob(os.path.join(HUB, "*.py")))
    assert any(m.endswith("failover.py") for m in modules)
    found = {os.path.basename(m): private_reaches(m) for m in modules}
    assert {m: r for m, r in found.items() if r} == {}


def test_the_check_sees_a_private_cross_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("class Healer:\n    def heal(self):\n        self.hub._call('h', 'm')\n        self._own()\n")
    assert private_reaches(str(sample)) == ["3: self.hub._call"]
