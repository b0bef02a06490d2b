"""The model zoo's table: every registered model built by name and summarised at 3x32x32."""
from cnnscope import zoo
from cnnscope.core.summary import ZooTable, summarize


def zoo_table(names=None) -> ZooTable:
    """One row per registered model (or per name in `names`): name, class, params, MACs at
    3x32x32, dataset, seed, description."""
    rows = []
    for name in names or zoo.list_models():
        entry = zoo.get_entry(name)
        model = entry.builder()
        result = summarize(model, (3, 32, 32))
        rows.append({
            "name": name,
            "class": type(model).__name__,
            "params": result.params_unique,
            "macs": result.macs,
            "dataset": entry.dataset,
            "seed": entry.seed_doc,
            "description": entry.description,
        })
    return ZooTable(rows)
