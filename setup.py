from pathlib import Path

from setuptools import find_packages, setup


def read_requirements(name: str) -> list[str]:
    lines = Path(__file__).with_name(name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="simdinov2",
    version="0.1.0",
    description="DINOv2 and SimDINO / SimDINOv2 (coding-rate regularised DINO) self-supervised training",
    python_requires=">=3.10",
    packages=find_packages(include=["dinov2*", "simdinov2*", "eval*"]),
    package_data={"dinov2": ["configs/*.yaml", "configs/**/*.yaml"], "simdinov2": ["configs/*.yaml"]},
    install_requires=read_requirements("requirements.txt"),
    extras_require={"seg": read_requirements("requirements-seg.txt"), "crf": ["pydensecrf2==1.1"]},
)
