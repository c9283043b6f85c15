"""Baseline: the tutorial's chapter 2-3 training script, as it describes it, for side-by-side timing.

MyDataset opens each PNG with PIL per access; DataLoader batch 16, shuffle; its Net (conv
6/16, fc 120/84) with xavier-normal convs and normal(0, 0.01) linears; cross-entropy; SGD
lr 0.001 momentum 0.9 dampening 0.1; StepLR step 50 gamma 0.1; RandomCrop 32 padding 4,
ToTensor, Normalize; TensorBoard scalars every 10 iterations and parameter/gradient
histograms per epoch; validation every 2 epochs (epoch % 2 == 0) and after the last.

    python bench/tutorial_train.py DATA_ROOT [--epochs 20] [--seed 0]

DATA_ROOT holds data/index/{train,valid}.txt and data/stats/normalize.json (the pipeline's).
Prints one JSON line: wall seconds, per-epoch valid accuracy, time to 25% valid accuracy.
"""

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import torchvision.transforms as transforms
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter


class MyDataset(Dataset):
    def __init__(self, txt_path, transform=None, target_transform=None):
        imgs = []
        with open(txt_path) as fh:
            for line in fh:
                line = line.rstrip()
                words = line.split()
                imgs.append((words[0], int(words[1])))
        self.imgs = imgs
        self.transform = transform
        self.target_transform = target_transform

    def __getitem__(self, index):
        fn, label = self.imgs[index]
        img = Image.open(fn).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __len__(self):
        return len(self.imgs)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                torch.nn.init.xavier_normal_(m.weight.data)
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                torch.nn.init.normal_(m.weight.data, 0, 0.01)
                m.bias.data.zero_()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.chdir(args.root)
    torch.manual_seed(args.seed)
    with open("data/stats/normalize.json") as f:
        stats = json.load(f)
    norm = transforms.Normalize(stats["mean"], stats["std"])
    train_tf = transforms.Compose(
        [transforms.Resize(32), transforms.RandomCrop(32, padding=4), transforms.ToTensor(), norm]
    )
    valid_tf = transforms.Compose([transforms.ToTensor(), norm])
    train_loader = DataLoader(MyDataset("data/index/train.txt", train_tf), batch_size=16, shuffle=True)
    valid_loader = DataLoader(MyDataset("data/index/valid.txt", valid_tf), batch_size=16)
    net = Net()
    net.initialize_weights()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9, dampening=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.1)
    writer = SummaryWriter(tempfile.mkdtemp())
    start = time.perf_counter()
    valid, reached = {}, None
    for epoch in range(args.epochs):
        loss_sigma, correct, total = 0.0, 0, 0
        for i, (inputs, labels) in enumerate(train_loader):
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).squeeze().sum().numpy()
            loss_sigma += loss.item()
            if i % 10 == 9:
                writer.add_scalars("Loss_group", {"train_loss": loss_sigma / 10}, epoch)
                writer.add_scalars("Accuracy_group", {"train_acc": correct / total}, epoch)
                loss_sigma = 0.0
        scheduler.step()
        writer.add_scalar("learning_rate", optimizer.param_groups[0]["lr"], epoch)
        for name, layer in net.named_parameters():
            writer.add_histogram(name + "_grad", layer.grad.cpu().data.numpy(), epoch)
            writer.add_histogram(name + "_data", layer.cpu().data.numpy(), epoch)
        if epoch % 2 == 0 or epoch == args.epochs - 1:
            net.eval()
            c, t = 0, 0
            with torch.no_grad():
                for images, labels in valid_loader:
                    _, predicted = torch.max(net(images).data, 1)
                    c += (predicted == labels).sum().item()
                    t += labels.size(0)
            net.train()
            valid[epoch + 1] = c / t
            if reached is None and c / t >= 0.25:
                reached = time.perf_counter() - start
    wall = time.perf_counter() - start
    writer.close()
    print(
        json.dumps(
            {"seconds": wall, "valid_acc": valid, "final_valid_acc": valid[args.epochs], "seconds_to_25": reached}
        )
    )


if __name__ == "__main__":
    main()
