"""Placement without a cluster: the order of the nodes for a new VM, and a node's refusal, from their records."""
import pytest

from webhyve.cluster.placement import free_cpus, order, refusal
from webhyve.sessions.errors import ApiError


def node(name, free, cpus=4, vcpus=0, load=0.0, up=True):
    return {"name": name, "mem_free_mb": free, "cpus": cpus, "vcpus": vcpus, "load": load, "up": up}


def test_most_free_memory_first_then_free_cpus_then_name():
    nodes = {n["name"]: n for n in (node("a", 512), node("b", 1024, vcpus=4), node("c", 1024, vcpus=1),
                                    node("d", 2048, up=False), node("e", 1024, vcpus=1))}
    assert [n["name"] for n in order(nodes)] == ["c", "e", "b", "a"]       # d is down: never tried


def test_a_busy_host_has_fewer_free_cpus_than_its_vcpus_say():
    assert free_cpus(node("a", 0, cpus=8, vcpus=2, load=6.5)) == 1.5
    assert free_cpus(node("a", 0, cpus=8, vcpus=3, load=0.2)) == 5


def test_the_node_asked_for_is_the_only_one_tried():
    nodes = {"a": node("a", 10), "b": node("b", 4096), "c": node("c", 64, up=False)}
    assert [n["name"] for n in order(nodes, "a")] == ["a"]
    with pytest.raises(ApiError) as unknown:
        order(nodes, "z")
    assert unknown.value.status == 400 and unknown.value.message == "no node named 'z' in the cluster (nodes: a, b, c)"
    with pytest.raises(ApiError) as down:
        order(nodes, "c")
    assert down.value.status == 409 and down.value.message.startswith("node 'c' is down")


def test_no_node_up():
    with pytest.raises(ApiError) as none:
        order({"a": node("a", 10, up=False)})
    assert none.value.status == 503


def test_a_node_refuses_what_does_not_fit_and_says_why():
    assert refusal("b", 1024, 960, 64, "vm") is None
    assert refusal("b", 1024, 961, 64, "vm") == ("node 'b' cannot take VM 'vm': it needs 64 MiB and 63 MiB of the "
                                                 "node's 1024 MiB are free")
