import nnmem


def test_all_is_exactly_what_the_package_exports() -> None:
    assert sorted(nnmem.__all__) == sorted(
        [
            "Breakdown",
            "Category",
            "LayerRow",
            "Mode",
            "NnmemError",
            "Peak",
            "Phase",
            "Report",
            "estimate",
            "measure",
        ]
    )
    for name in nnmem.__all__:
        assert hasattr(nnmem, name)


def test_breakdowns_add() -> None:
    total = nnmem.Breakdown(parameter=1, gradient=2) + nnmem.Breakdown(parameter=3, activation=4)
    assert total == nnmem.Breakdown(parameter=4, gradient=2, activation=4)
    assert total.total == 1 + 2 + 3 + 4
