"""Your own code: models, transforms and losses that params.yaml can choose by name.

Put a module here (any name), define your class, and register it with one decorator from
`cifarlab.register`: `register_model`, `register_transform` or `register_loss`. cifarlab
imports every module of this package when a stage resolves a name, and dvc.yaml declares the
whole folder as a dependency of train, evaluate, export and visualize, so editing a file here
reruns them. The three modules here are worked examples to copy:

* `models.py`: `user.my_nn`, the beginner notes' CIFAR net written as the notes write it;
* `transforms.py`: `AddPepperNoise`, the course's salt-and-pepper transform;
* `losses.py`: `FocalLoss`, the focal loss of Lin et al. (2017).

    dvc exp run -S model.name=user.my_nn -S loss.name=FocalLoss \\
      -S 'augment.train=[{AddPepperNoise:{snr:0.95,p:0.5}},{RandomHorizontalFlip:{}},{Normalize:{}}]'

A name that is already a built-in one (a torch.nn loss, a torchvision.transforms.v2 class, an
architecture of another model source) is refused with one line naming both. README.md
("Your own model, transform or loss") and docs/architecture.md say more.
"""
