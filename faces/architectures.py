"""The embedding architectures faces.models builds, and the input size each is made for: names
only, so command-line help can list them without importing torch."""

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")
DEFAULT_INPUT_SIZE = {"small": 64, "inception_resnet_v1": 160, "dlib_resnet": 150, "mobilenet_v2": 224,
                      "hse_mobilenet": 224,
                      "resnet18": 112, "resnet34": 112, "resnet50": 112}
ARCHITECTURES = tuple(DEFAULT_INPUT_SIZE)
