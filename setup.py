from setuptools import find_packages, setup

setup(
    name="cnnscope",
    version="0.1.0",
    description="Train compact CNNs, then inspect how they see: receptive fields, gates, sharing, attributions.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The zoo lives in the top-level folder models/ but installs and imports as cnnscope.zoo: a
    # top-level `models` package would collide with the `models/` of the user's own repository.
    packages=find_packages(include=["cnnscope", "cnnscope.*"]) + ["cnnscope.zoo"],
    package_dir={"cnnscope.zoo": "models"},
    install_requires=[
        "torch",
        "torchvision",
        "click>=8.1",
        "rich",
        "captum",
        "matplotlib",
        "albumentations",
        "numpy",
        "pyyaml",  # train --config FILE
    ],
    extras_require={
        # CI installs dev and runs every test: the tensorboard and sweep tests need their packages;
        # scikit-learn is also benchmarks/small_data.py's digits; pytest-xdist runs the test files in
        # two workers (pytest.ini)
        "dev": ["pytest", "pytest-xdist", "hypothesis", "tensorboard", "optuna", "scikit-learn"],
        "onnx": ["onnx", "onnxruntime"],
        "tensorboard": ["tensorboard"],  # train --tensorboard
        "sweep": ["optuna", "scikit-learn"],  # cnnscope sweep (scikit-learn: fANOVA parameter importances)
        "benchmark": ["timm"],  # benchmarks/timm_rf.py
    },
    entry_points={"console_scripts": ["cnnscope = cnnscope.cli:main"]},
)
