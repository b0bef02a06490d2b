"""Conformance (issue 14): on the feature extractor of every classification family torchvision ships
(the smallest variant of each) and on its segmentation models, the analysis equals the independent
gradient probe of --verify, unit by unit, on an input that does not clip (float64).

The models are built on the meta device and given uninitialised CPU storage: neither the analysis
nor the probe (which sets every weight itself) reads the initial values, and initialising them costs
more than the check (VGG's classifier alone: seconds). The numbers pinned here are the probe's
(the analysis must equal them); the slow cases (over ~5 s each on one thread) are marked slow.
"""
import pytest
import torch
import torchvision.models as tv
import torchvision.models.segmentation as seg

from cnnscope.core.rf import receptive_field, verify_receptive_field

slow = pytest.mark.slow
SEGMENTATION = dict(weights=None, weights_backbone=None)

# name, constructor of the feature extractor, RF the probe measures ("global": every pixel)
CASES = [
    ("resnet18", lambda: tv.resnet18(), 435),
    pytest.param("resnext50_32x4d", lambda: tv.resnext50_32x4d(), 427, marks=slow),
    pytest.param("wide_resnet50_2", lambda: tv.wide_resnet50_2(), 427, marks=slow),
    ("vgg11", lambda: tv.vgg11().features, 150),
    ("alexnet", lambda: tv.alexnet().features, 195),
    ("squeezenet1_1", lambda: tv.squeezenet1_1().features, 207),
    pytest.param("densenet121", lambda: tv.densenet121().features, 2071, marks=slow),
    ("googlenet", lambda: tv.googlenet(aux_logits=False, init_weights=False), 379),
    pytest.param("inception_v3", lambda: tv.inception_v3(aux_logits=False, init_weights=False), 1311, marks=slow),
    ("mobilenet_v2", lambda: tv.mobilenet_v2().features, 491),
    ("mobilenet_v3_small", lambda: tv.mobilenet_v3_small().features, "global"),  # squeeze-excitation
    ("mnasnet0_5", lambda: tv.mnasnet0_5().layers, 843),
    ("shufflenet_v2_x0_5", lambda: tv.shufflenet_v2_x0_5(), 527),
    ("efficientnet_b0", lambda: tv.efficientnet_b0().features, "global"),
    pytest.param("efficientnet_v2_s", lambda: tv.efficientnet_v2_s().features, "global", marks=slow),
    ("regnet_y_400mf", lambda: tv.regnet_y_400mf(), "global"),
    pytest.param("convnext_tiny", lambda: tv.convnext_tiny().features, 1688, marks=slow),  # channels-last blocks
    pytest.param("fcn_resnet50", lambda: seg.fcn_resnet50(**SEGMENTATION, aux_loss=False), 451, marks=slow),
    ("deeplabv3_mobilenet_v3_large", lambda: seg.deeplabv3_mobilenet_v3_large(**SEGMENTATION), "global"),
    ("lraspp_mobilenet_v3_large", lambda: seg.lraspp_mobilenet_v3_large(**SEGMENTATION), "global"),
]


# Segmentation outputs are upsampled (bilinear) to the input's size: the units' local windows differ.
# (min, max) over the units and the centre unit's, at the input of SIDES (fcn: one the RF fits in).
VARYING = {"fcn_resnet50": ((443, 451), 451), "deeplabv3_mobilenet_v3_large": ((1843, 1859), 1859),
           "lraspp_mobilenet_v3_large": ((659, 691), 675)}
SIDES = {"inception_v3": (3, 96, 96), "fcn_resnet50": (3, 464, 464)}


def uninitialised(make):
    try:
        with torch.device("meta"):
            model = make()
    except NotImplementedError:  # RegNet computes its widths with tensors: built on the CPU
        return make()
    return model.to_empty(device="cpu")


@pytest.mark.parametrize("name, make, rf", CASES)
def test_analysis_equals_verify(name, make, rf):
    model = uninitialised(make)
    result = receptive_field(model, SIDES.get(name, (3, 64, 64)))
    assert result.final_rf == rf and result.warnings == []
    assert result.varies == (name in VARYING)
    if result.varies:
        (lo, hi), centre = VARYING[name]
        assert result.final_range_hw == ((lo, hi), (lo, hi)) and result.final_centre_hw == (centre, centre)
    result.probe = verify_receptive_field(model, result)
    assert result.verified and not result.probe.clipped and result.probe.dtype == "float64"
    assert all(c.match for c in result.probe.units)
    if rf == "global":  # every pixel of the (unchanged) input moves the centre unit
        assert result.probe.rf == result.probe.input_size
    else:  # the input grew past the RF, and the centre unit's support lies inside it
        assert min(result.probe.input_size) > rf
        assert result.probe.rf == result.final_centre_hw
