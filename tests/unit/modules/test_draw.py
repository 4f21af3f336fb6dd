"""Drawing state graphs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import networkx as nx
import pytest

from modules.draw import draw_module, layered_layout


@pytest.fixture
def graph() -> nx.DiGraph:
    g = nx.DiGraph(name="Example")
    for name, stype in [("Initial", "Initial"), ("Wait", "Delay"), ("Sick", "ConditionOnset"),
                        ("Terminal", "Terminal"), ("Island", "Simple"), ("Gone", "Missing")]:
        g.add_node(name, type=stype, spec={"exact": {"quantity": 1, "unit": "years"}}
                   if stype == "Delay" else {})
    g.add_edge("Initial", "Wait", kind="direct", label="")
    g.add_edge("Wait", "Sick", kind="distributed", label="30%")
    g.add_edge("Wait", "Terminal", kind="distributed", label="70%")
    g.add_edge("Sick", "Wait", kind="direct", label="")  # a loop
    g.add_edge("Island", "Gone", kind="direct", label="")
    return g


def test_layers_follow_breadth_first_distance(graph):
    pos = layered_layout(graph)
    assert set(pos) == set(graph.nodes)
    assert pos["Initial"][1] == 0
    assert pos["Wait"][1] == -1
    assert pos["Sick"][1] == pos["Terminal"][1] == -2
    assert pos["Island"][1] == pos["Gone"][1] == -3  # unreachable: one last layer


def test_svg_is_xml_with_every_state_name(graph, tmp_path):
    out = draw_module(graph, tmp_path / "g.svg")
    text = out.read_text()
    ET.fromstring(text)
    for name in graph.nodes:
        assert name in text


def test_png_is_written(graph, tmp_path):
    out = draw_module(graph, tmp_path / "g.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_unknown_suffix_raises_and_writes_nothing(graph, tmp_path):
    with pytest.raises(ValueError, match=r"\.pdf"):
        draw_module(graph, tmp_path / "g.pdf")
    assert list(tmp_path.iterdir()) == []
